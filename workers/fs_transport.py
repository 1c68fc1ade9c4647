"""The embedded broker: kombu's serverless *filesystem* transport with an atomic ``put``.

kombu's own ``_put`` creates the message file directly in the queue folder and then writes it; a consumer
polling the folder can move and read that file before the bytes are in, which loses the message and crashes
the consumer with a ``JSONDecodeError`` (seen under load in CI: an analysis stayed ``queued`` and the worker's
consumer died). Here a message is written to a staging folder beside the queue (same filesystem, never listed
by consumers) and renamed into the queue folder in one ``os.replace``, so a consumer sees either no file or the
whole message. Registered as the ``tgfs://`` scheme by :func:`register` (``workers.celery_app.configure``).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

SCHEME = "tgfs"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Put ``payload`` onto ``queue``: write in the staging folder, then rename into the queue folder."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        staging = self.transport_options.get("staging_folder") or os.path.join(
            self.data_folder_out, os.pardir, "staging"
        )
        tmp = os.path.join(staging, name)
        try:
            os.makedirs(staging, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(tmp, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise ChannelError(f"Cannot add message {name!r} to the queue folder {self.data_folder_out!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> None:
    """Make ``tgfs://`` resolve to this transport in this process (kombu looks schemes up by name)."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")
