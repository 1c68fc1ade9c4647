/* Exact float64 distances of row pairs (METHODS §0, §7; estimators.knn.exact_distances).
 *
 *   out[p] = sqrt(sum_t ((double)B[ib[p]][t] - (double)A[ia[p]][t])^2)
 *
 * Difference based, in float64, straight from float32 or float64 rows: one pass over the two rows, no float64
 * copy of them (the torch fallback converts and subtracts in separate passes). Eight partial sums let the
 * compiler vectorise without reassociating anything it was not told to. Loaded with ctypes (no Python API);
 * callers split the pairs across threads (ctypes releases the GIL).
 */
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TG_CLONES
#endif

#define TG_PAIR_KERNEL(NAME, T)                                                                              \
    TG_CLONES void NAME(const T *A, const int64_t *ia, const T *B, const int64_t *ib, int64_t P, int64_t D,  \
                        double *out) {                                                                       \
        for (int64_t p = 0; p < P; ++p) {                                                                    \
            const T *a = A + ia[p] * D;                                                                      \
            const T *b = B + ib[p] * D;                                                                      \
            double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                          \
            int64_t t = 0;                                                                                   \
            for (; t + 8 <= D; t += 8) {                                                                     \
                for (int u = 0; u < 8; ++u) {                                                                \
                    double d = (double)b[t + u] - (double)a[t + u];                                          \
                    s[u] += d * d;                                                                           \
                }                                                                                            \
            }                                                                                                \
            double acc = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));                  \
            for (; t < D; ++t) {                                                                             \
                double d = (double)b[t] - (double)a[t];                                                      \
                acc += d * d;                                                                                \
            }                                                                                                \
            out[p] = sqrt(acc);                                                                              \
        }                                                                                                    \
    }

TG_PAIR_KERNEL(tg_pair_dist_f32, float)
TG_PAIR_KERNEL(tg_pair_dist_f64, double)

/* ABI version of this file, checked by the loader (estimators/_native/__init__.py). */
int tg_native_abi(void) { return 1; }
