/* Starts Swagger UI on /docs from this server's own copy of its files (no CDN; no inline script, for the CSP). */
window.addEventListener("DOMContentLoaded", function () {
  "use strict";
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, layout: "BaseLayout",
    presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIBundle.SwaggerUIStandalonePreset].filter(Boolean),
    showExtensions: true, showCommonExtensions: true,
  });
});
