/* Native CPU kernels of the kNN engine (docs/methods.md §0, §7; estimators/knn.py, loaded by estimators/_native).
 *
 *   tg_pair_dist_f32/_f64  out[p] = sqrt(sum_t ((double)B[ib[p]][t] - (double)A[ia[p]][t])^2)
 *   tg_block_scan          one block of the symmetric search: certified values from the GEMM's products, threshold
 *                          tests, each row's K smallest values and partners kept (tightening its threshold)
 *   tg_proj_keep           one piece of the symmetric search's projected test: the columns some row of the block
 *                          (or the column itself) may need, from the GEMM's computed projected squared distances
 *   tg_topk_merge(_i32)    each row's k best (distance, index) pairs, by insertion (int64 or int32 ids)
 *   tg_frame_rows_f32/_f64 rows of the engine's GEMM frame built from the reference: (float)(x - mu) in float64
 *
 * Distances are difference based, in float64, straight from float32 or float64 rows: one pass over the two rows,
 * no float64 copy of them (the torch fallback converts and subtracts in separate passes). Eight partial sums let
 * the compiler vectorise without reassociating anything it was not told to, and -std=c99 keeps it from
 * contracting into FMAs, so every clone below computes the same bits. Loaded with ctypes (no Python API);
 * callers split the pair kernel's work across threads (ctypes releases the GIL).
 */
#include <math.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TG_CLONES
#endif

/* The one float64 distance of two rows; inlined into every kernel below, so that each computes it with the same
 * operations in the same order (d(i, j) is bitwise the same number whichever kernel produced it). */
#define TG_DIST(NAME, T)                                                                                     \
    static inline double NAME(const T *a, const T *b, int64_t D) {                                           \
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                                              \
        int64_t t = 0;                                                                                       \
        for (; t + 8 <= D; t += 8) {                                                                         \
            for (int u = 0; u < 8; ++u) {                                                                    \
                double d = (double)b[t + u] - (double)a[t + u];                                              \
                s[u] += d * d;                                                                               \
            }                                                                                                \
        }                                                                                                    \
        double acc = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));                      \
        for (; t < D; ++t) {                                                                                 \
            double d = (double)b[t] - (double)a[t];                                                          \
            acc += d * d;                                                                                    \
        }                                                                                                    \
        return sqrt(acc);                                                                                    \
    }

TG_DIST(tg_dist_f32, float)
TG_DIST(tg_dist_f64, double)

#define TG_PAIR_KERNEL(NAME, T, DIST)                                                                        \
    TG_CLONES void NAME(const T *A, const int64_t *ia, const T *B, const int64_t *ib, int64_t P, int64_t D,  \
                        double *out) {                                                                       \
        for (int64_t p = 0; p < P; ++p)                                                                      \
            out[p] = DIST(A + ia[p] * D, B + ib[p] * D, D);                                                  \
    }

TG_PAIR_KERNEL(tg_pair_dist_f32, float, tg_dist_f32)
TG_PAIR_KERNEL(tg_pair_dist_f64, double, tg_dist_f64)

/* Fused top-k scan of one block of the symmetric search (estimators.knn.engine._pruned_symmetric).
 *
 * dot: (R, C) float32 products a_i . a_j of the block's rows with its columns, straight from one GEMM (no other
 * pass over them); rn2 (R) and cn2 (C): the float32 squared norms |a|^2 of those rows and columns; rpos/cpos their
 * positions in the per-row arrays below. The certified value of entry (i, j) is the float32
 * s = (rn2[i] + cn2[j]) - 2 dot[i][j], the value whose error step 1 of the engine bounds (any order of the two
 * additions is covered); entries with rpos[i] == cpos[j] (a row with itself) are skipped. Column j is offered to
 * row i when s <= thr[rpos[i]], and row i to column j when j >= nb (columns before nb lie inside the block: their
 * pairs meet both directions as rows) and s <= thr[cpos[j]].
 *
 * Each row keeps the K smallest values offered to it with their partners' positions (kv/ki, (n, K) ascending,
 * +inf / -1 when empty; an offer equal to a full list's last value is not kept). Once k <= K values are kept, the
 * k-th one s_k gives an upper bound U = sqrt(s_k + E N^2) + eta N of the row's k-th neighbour distance
 * (N = Nrow[row]), and so a tighter threshold (U + eta N)^2 + E N^2 (rounded up to float32; the same bounds as
 * _Bounds.upper/candidate_threshold), which replaces thr[row] when smaller. Thresholds only decrease and each is
 * always valid, so every true neighbour is offered; the caller knows a row's list holds every offer that can pass
 * its final threshold when the list's last value lies above it (everything not kept is >= that value).
 *
 * thr may be shared by several threads: a store can race with another thread's, but every value ever written is a
 * valid threshold, so a race only leaves a looser valid one.
 *
 * Most entries pass neither test: each row is screened TG_W columns at a time by a loop the compiler vectorises,
 * against the row's threshold and tcol, the column thresholds as they were when the call began (they only
 * decrease, so the screen never misses an entry that passes the current ones); only groups with a hit are
 * examined one by one, against the current thresholds. Returns the number of offers. */
#define TG_W 16

static inline float tg_up_f32(double x) {
    float f = (float)x;
    if ((double)f < x)
        f = nextafterf(f, INFINITY);
    return f;
}

static inline void tg_keep(float *kv, int32_t *ki, int64_t K, int64_t k, float v, int32_t id, float *thr, double N,
                           double E, double eta) {
    if (!(v < kv[K - 1]))
        return;
    int64_t pos = K - 1;
    while (pos > 0 && kv[pos - 1] > v) {
        kv[pos] = kv[pos - 1];
        ki[pos] = ki[pos - 1];
        --pos;
    }
    kv[pos] = v;
    ki[pos] = id;
    const float sk = kv[k - 1];
    if (pos < k && sk < INFINITY) {
        const double s = sk > 0 ? (double)sk : 0.0;
        const double U = sqrt(s + E * N * N) + eta * N;
        const double t = (U + eta * N) * (U + eta * N) + E * N * N;
        const float tf = tg_up_f32(t);
        if (tf < *thr)
            *thr = tf;
    }
}

TG_CLONES int64_t tg_block_scan(const float *dot, int64_t R, int64_t C, int64_t nb, const float *rn2,
                                const float *cn2, const int64_t *rpos, const int64_t *cpos, float *tcol, float *kv,
                                int32_t *ki, int64_t K, int64_t k, float *thr, const double *Nrow, double E,
                                double eta) {
    int64_t m = 0;
    for (int64_t j = 0; j < C; ++j)
        tcol[j] = thr[cpos[j]];
    for (int64_t i = 0; i < R; ++i) {
        const float *drow = dot + i * C;
        const float a = rn2[i];
        const int64_t ri = rpos[i];
        for (int64_t j0 = 0; j0 < C; j0 += TG_W) {
            const int64_t w = C - j0 < TG_W ? C - j0 : TG_W;
            const float tr = thr[ri];
            int hit = 0;
            for (int64_t u = 0; u < w; ++u) {
                const float s = (a + cn2[j0 + u]) - 2.0f * drow[j0 + u];
                hit |= (s <= tr) | (s <= tcol[j0 + u]);
            }
            if (!hit)
                continue;
            for (int64_t j = j0; j < j0 + w; ++j) {
                const int64_t cj = cpos[j];
                if (cj == ri)
                    continue;
                const float s = (a + cn2[j]) - 2.0f * drow[j];
                if (s <= thr[ri]) {
                    tg_keep(kv + ri * K, ki + ri * K, K, k, s, (int32_t)cj, thr + ri, Nrow[ri], E, eta);
                    ++m;
                }
                if (j >= nb && s <= thr[cj]) {
                    tg_keep(kv + cj * K, ki + cj * K, K, k, s, (int32_t)ri, thr + cj, Nrow[cj], E, eta);
                    ++m;
                }
            }
        }
    }
    return m;
}

/* Projected test of one piece of a block (estimators.knn.engine._pruned_symmetric, ``projected``).
 *
 * G: (C, R) float32 computed projected squared distances of C columns (rows of G) to the block's R rows; thr_r (R)
 * the block rows' thresholds, thr_c (C) the columns' own. Column j is kept when G[j][i] <= thr_r[i] (row i may have
 * it among its neighbours) or G[j][i] <= thr_c[j] (it may have row i among its own) for some i. The kept columns'
 * numbers base + j are written to out in ascending order; returns their count. One pass over G, the R comparisons
 * of a column vectorised (what three passes of torch reductions and a nonzero did). A NaN entry passes no test. */
TG_CLONES int64_t tg_proj_keep(const float *G, int64_t C, int64_t R, const float *thr_r, const float *thr_c,
                               int64_t base, int64_t *out) {
    int64_t m = 0;
    for (int64_t j = 0; j < C; ++j) {
        const float *g = G + j * R;
        const float tc = thr_c[j];
        int hit = 0;
        for (int64_t i = 0; i < R; ++i)
            hit |= (g[i] <= thr_r[i]) | (g[i] <= tc);
        if (hit)
            out[m++] = base + j;
    }
    return m;
}

/* Merge exact pairs into every row's k best (estimators.knn._Engine._merge_rows).
 *
 * out_d/out_i: (Q, k) row-major, each row ascending by (distance, index), empty slots (index -1, distance +inf)
 * last. Entry p offers neighbour cols[p] at distance d[p] to row rows[p]; it is inserted when that neighbour is
 * not in the row yet and (d, index) is smaller than the row's last entry (an empty slot is always larger).
 * The result is the k smallest distinct (distance, index) pairs offered so far, whatever the order of the
 * entries: the same rows as a sort by (row, distance, index) with repeats dropped.
 */
#define TG_MERGE(NAME, I)                                                                                    \
    void NAME(const I *rows, const I *cols, const double *d, int64_t P, double *out_d, I *out_i, int64_t k) { \
        for (int64_t p = 0; p < P; ++p) {                                                                    \
            double *rd = out_d + (int64_t)rows[p] * k;                                                       \
            I *ri = out_i + (int64_t)rows[p] * k;                                                            \
            const double v = d[p];                                                                           \
            const I c = cols[p];                                                                             \
            if (ri[k - 1] >= 0 && (v > rd[k - 1] || (v == rd[k - 1] && c >= ri[k - 1])))                     \
                continue; /* not better than the row's k-th */                                               \
            int64_t pos = k - 1, dup = 0;                                                                    \
            for (int64_t t = 0; t < k && ri[t] >= 0; ++t) {                                                  \
                if (ri[t] == c) {                                                                            \
                    dup = 1;                                                                                 \
                    break;                                                                                   \
                }                                                                                            \
            }                                                                                                \
            if (dup)                                                                                         \
                continue;                                                                                    \
            while (pos > 0 && (ri[pos - 1] < 0 || v < rd[pos - 1] || (v == rd[pos - 1] && c < ri[pos - 1]))) { \
                rd[pos] = rd[pos - 1];                                                                       \
                ri[pos] = ri[pos - 1];                                                                       \
                --pos;                                                                                       \
            }                                                                                                \
            rd[pos] = v;                                                                                     \
            ri[pos] = c;                                                                                     \
        }                                                                                                    \
    }

/* int64 ids, and int32 ids (the search keeps its best lists in int32 while the row count allows: half the
 * memory of the index table) */
TG_MERGE(tg_topk_merge, int64_t)
TG_MERGE(tg_topk_merge_i32, int32_t)

/* Rows of the GEMM frame of the symmetric search, built from the reference when it is not held whole
 * (estimators.knn.engine._Worker.frame_rows): out[i][t] = (float)((double)ref[r_i][t] - mu[t]) with r_i = idx[i], or
 * start + i when idx is NULL; the float64 difference rounded once to float32, the numbers torch gives for
 * (x.double() - mu).float(). One pass over the rows, no float64 temporary. */
#define TG_FRAME(NAME, T)                                                                                    \
    TG_CLONES void NAME(const T *ref, const int64_t *idx, int64_t start, int64_t m, int64_t D, const double *mu, \
                        float *out) {                                                                        \
        const int64_t L = 64 / (int64_t)sizeof(T); /* elements per cache line */                              \
        for (int64_t i = 0; i < m; ++i) {                                                                    \
            const T *x = ref + (idx ? idx[i] : start + i) * D;                                               \
            const T *nx = i + 1 < m ? ref + (idx ? idx[i + 1] : start + i + 1) * D : x;                     \
            float *o = out + i * D;                                                                          \
            int64_t t0 = 0;                                                                                  \
            for (; t0 + L <= D; t0 += L) {                                                                   \
                __builtin_prefetch(nx + t0); /* the next row (scattered rows: no hardware prefetch) */        \
                for (int64_t t = t0; t < t0 + L; ++t)                                                        \
                    o[t] = (float)((double)x[t] - mu[t]);                                                    \
            }                                                                                                \
            for (int64_t t = t0; t < D; ++t)                                                                 \
                o[t] = (float)((double)x[t] - mu[t]);                                                        \
        }                                                                                                    \
    }

TG_FRAME(tg_frame_rows_f32, float)
TG_FRAME(tg_frame_rows_f64, double)

/* ABI version of this file, checked by the loader (estimators/_native/__init__.py). */
int tg_native_abi(void) { return 10; }
