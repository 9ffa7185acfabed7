/* Fused CPU kernels for phase 2 (loaded by extagg/native.py through ctypes; no Python or torch headers).
 *
 * side_stats_*: statistics of v (outer, R, inner) along R, every requested one from one read of v; v may be the
 *   product of a broadcast tensor and a full one, or scaled per (outer, R) row (Grad-CAM's x * w).
 * depthwise_stats_*: the nine statistics of a depthwise factored contribution (one gradient entry and one
 *   input channel per block), the patch statistics taken on the fly from a zero-padded slab of rows.
 * Both split their work over `threads` threads (OpenMP where built with it, else POSIX threads) by output rows,
 * so no two threads write the same output.
 * Sums run sequentially in the input's precision; extremes are exact; NaNs propagate as in torch.
 */
#ifndef KERNEL_BODY
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64
#ifndef DW_BLOCK
#define DW_BLOCK 4096  /* output entries (times targets) per depthwise work item */
#endif

typedef void (*work_fn)(void *, int64_t, int64_t);
#ifndef _OPENMP
typedef struct { work_fn fn; void *arg; int64_t lo, hi; } task_t;

static void *run_task(void *p) {
    task_t *t = (task_t *)p;
    if (t->hi > t->lo) t->fn(t->arg, t->lo, t->hi);
    return NULL;
}

#endif

/* fn(arg, lo, hi) over [0, n) in `threads` contiguous ranges. Built with OpenMP, this runs on the OpenMP runtime
 * that torch has already loaded (the same soname), so the kernels share torch's worker threads instead of competing
 * with them while they spin; without OpenMP, on POSIX threads started per call. */
static void parallel_for(int64_t n, int threads, work_fn fn, void *arg) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n) threads = (int)n;
    if (threads <= 1) {
        if (n > 0) fn(arg, 0, n);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int k = 0; k < threads; k++) fn(arg, n * k / threads, n * (k + 1) / threads);
#else
    pthread_t tid[MAX_THREADS];
    task_t tasks[MAX_THREADS];
    int started[MAX_THREADS];
    for (int k = 0; k < threads; k++) {
        tasks[k].fn = fn; tasks[k].arg = arg;
        tasks[k].lo = n * k / threads; tasks[k].hi = n * (k + 1) / threads;
        started[k] = 0;
    }
    for (int k = 1; k < threads; k++) started[k] = pthread_create(&tid[k], NULL, run_task, &tasks[k]) == 0;
    run_task(&tasks[0]);
    for (int k = 1; k < threads; k++) {
        if (started[k]) pthread_join(tid[k], NULL);
        else run_task(&tasks[k]);  /* could not start a thread: do its share here */
    }
#endif
}

/* One instruction each (maxps/minps). POS propagates NaN, as clamp(min=0) does; MAX and MIN drop a NaN that comes
 * in as v, so each kernel ends with a fix-up: a sum of positive parts (never NaN from finite numbers) that is NaN
 * marks an output whose extremes must be NaN too, as torch.amax/amin would give. */
#define MAX(v, m) ((v) > (m) ? (v) : (m))
#define MIN(v, m) ((v) < (m) ? (v) : (m))
#define POS(v) ((v) < 0 ? 0 : (v))

enum { S_SUM, S_SQ, S_POS, S_NEG, S_POS_SQ, S_NEG_SQ, S_MAX, S_MIN, S_MIN_ABS, S_COUNT };
enum { W_SUM, W_POS, W_NEG, W_POS_SQ, W_NEG_SQ, W_MAX, W_MIN, W_MIN_ABS, W_COUNT };  /* window (patch) statistics */
enum { D_SUM, D_SQ, D_SIGNED0, D_SIGNED1, D_SIGNED_SQ0, D_SIGNED_SQ1, D_MAX, D_MIN, D_MIN_ABS, D_COUNT };

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, SUFFIX)

#define KERNEL_BODY
#define T float
#define SUFFIX f32
#include __FILE__
#undef T
#undef SUFFIX
#define T double
#define SUFFIX f64
#include __FILE__

#else /* KERNEL_BODY: everything below is compiled once per element type T */

typedef struct {
    const T *v, *other, *scale; int64_t outer, R, inner, tile, repeat; T *out[S_COUNT];
} NAME(side_args);


/* Fold RB rows (pitch `inner`) into the nine accumulators of a tile, each accumulator read and written once per
 * RB rows; an entry is x, times b (PRODUCT) and the row's scale (SCALED). Inlined with constant arguments. */
static inline __attribute__((always_inline)) void NAME(side_rows)(
        const int RB, const int PRODUCT, const int SCALED, int64_t len, int64_t inner, const T *restrict x,
        const T *restrict b, const T *restrict scale, T *restrict sum, T *restrict sq, T *restrict pos,
        T *restrict neg, T *restrict pos_sq, T *restrict neg_sq, T *restrict mx, T *restrict mn, T *restrict ma) {
    for (int64_t j = 0; j < len; j++) {
        T s = sum[j], q = sq[j], ps = pos[j], ns = neg[j], psq = pos_sq[j], nsq = neg_sq[j];
        T hi = mx[j], lo = mn[j], am = ma[j];
        for (int k = 0; k < RB; k++) {
            T v = x[k * inner + j];
            if (PRODUCT) v *= b[k * inner + j];
            if (SCALED) v *= scale[k];
            const T pv = POS(v), nv = pv - v, av = pv + nv;
            s += v; q += v * v; ps += pv; ns += nv; psq += pv * pv; nsq += nv * nv;
            hi = MAX(v, hi); lo = MIN(v, lo); am = MIN(av, am);
        }
        const int nan = ps != ps;  /* NaN from here on: the extremes stay NaN (a NaN m wins every MAX/MIN) */
        sum[j] = s; sq[j] = q; pos[j] = ps; neg[j] = ns; pos_sq[j] = psq; neg_sq[j] = nsq;
        mx[j] = nan ? ps : hi; mn[j] = nan ? ps : lo; ma[j] = nan ? ps : am;
    }
}

static void NAME(side_work)(void *p, int64_t lo, int64_t hi) {
    const NAME(side_args) *a = (const NAME(side_args) *)p;
    const int64_t inner = a->inner, tiles = (inner + a->tile - 1) / a->tile, R = a->R;
    T dummy[S_COUNT][512];  /* where the unrequested statistics go */
    for (int64_t item = lo; item < hi; item++) {
        const int64_t o = item / tiles, i0 = (item % tiles) * a->tile;
        const int64_t len = inner - i0 < a->tile ? inner - i0 : a->tile;
        T *acc[S_COUNT];
        for (int s = 0; s < S_COUNT; s++) acc[s] = a->out[s] ? a->out[s] + o * inner + i0 : dummy[s];
        for (int64_t j = 0; j < len; j++) {
            acc[S_SUM][j] = 0; acc[S_SQ][j] = 0; acc[S_POS][j] = 0; acc[S_NEG][j] = 0; acc[S_POS_SQ][j] = 0;
            acc[S_NEG_SQ][j] = 0; acc[S_MAX][j] = -INFINITY; acc[S_MIN][j] = INFINITY; acc[S_MIN_ABS][j] = INFINITY;
        }
        const T *x = a->v + (o / a->repeat) * R * inner + i0;
        const T *b = a->other ? a->other + o * R * inner + i0 : NULL;
        const T *scale = a->scale ? a->scale + o * R : NULL;
        const int mode = (b != NULL) + 2 * (scale != NULL);
        for (int64_t r = 0; r < R;) {
            const int64_t off = r * inner;
            const T *xr = x + off, *br = b ? b + off : NULL, *sr = scale ? scale + r : NULL;
#define SIDE_ROWS(RB, PRODUCT, SCALED) NAME(side_rows)(RB, PRODUCT, SCALED, len, inner, xr, br, sr, acc[S_SUM],       \
        acc[S_SQ], acc[S_POS], acc[S_NEG], acc[S_POS_SQ], acc[S_NEG_SQ], acc[S_MAX], acc[S_MIN], acc[S_MIN_ABS])
#define SIDE_MODES(RB) switch (mode) {                                                                            \
        case 0: SIDE_ROWS(RB, 0, 0); break; case 1: SIDE_ROWS(RB, 1, 0); break;                                   \
        case 2: SIDE_ROWS(RB, 0, 1); break; default: SIDE_ROWS(RB, 1, 1); }
            if (R - r >= 4) { SIDE_MODES(4); r += 4; }
            else { SIDE_MODES(1); r += 1; }
#undef SIDE_MODES
#undef SIDE_ROWS
        }
    }
}

/* v has outer / repeat rows of (R, inner); entry (o, r, i) is v[o / repeat, r, i], times other[o, r, i] and
 * scale[o, r] where those are given (non-NULL). */
int NAME(side_stats)(const T *v, const T *other, const T *scale, int64_t outer, int64_t repeat, int64_t R,
                     int64_t inner, T **out, int threads) {
    NAME(side_args) a;
    a.v = v; a.other = other; a.scale = scale; a.outer = outer; a.repeat = repeat < 1 ? 1 : repeat;
    a.R = R; a.inner = inner;
    a.tile = 2048 / (int64_t)sizeof(T);  /* nine accumulator rows of a tile stay in L1 */
    for (int s = 0; s < S_COUNT; s++) a.out[s] = out[s];
    if (outer <= 0 || inner <= 0) return 0;
    parallel_for(outer * ((inner + a.tile - 1) / a.tile), threads, NAME(side_work), &a);
    return 0;
}

typedef struct {
    const T *g, *x; int64_t N, Tt, C, h, w, H, W, kh, kw, sh, sw, pt, pl, dh, dw; T *out[D_COUNT];
    int failed, threads;
} NAME(dw_args);


#define TAP(OFF) do {                                                                                      \
        const T v = src[(OFF) + j], pv = POS(v), nv = pv - v, av = pv + nv;                                     \
        s += v; ps += pv; ns += nv; psq += pv * pv; nsq += nv * nv;                                              \
        mx = MAX(v, mx); mn = MIN(v, mn); ma = MIN(av, ma);                                                      \
    } while (0)
#define ROW_BEGIN for (int64_t j = 0; j < w; j++) { \
        T s = 0, ps = 0, ns = 0, psq = 0, nsq = 0, mx = -INFINITY, mn = INFINITY, ma = INFINITY;
#define ROW_END S[j] = s; P[j] = ps; Q[j] = ns; QP[j] = psq; QN[j] = nsq; MX[j] = mx; MN[j] = mn; MA[j] = ma; }
#define ROW_ARGS int64_t w, int64_t wp, int64_t dh, int64_t dw, int64_t kh, int64_t kw, const T *restrict src,   \
        T *restrict S, T *restrict P, T *restrict Q, T *restrict QP, T *restrict QN, T *restrict MX,            \
        T *restrict MN, T *restrict MA

/* Patch statistics of one output row (length w) for stride 1: the taps of a column are read from the zero-padded
 * slab rows (pitch wp) starting at `src` and reduced in registers; 3x3 written out so the column loop vectorises. */
static void NAME(window_row_3x3)(ROW_ARGS) {
    (void)kh; (void)kw;
    const int64_t r1 = dh * wp, r2 = 2 * dh * wp, c1 = dw, c2 = 2 * dw;
    ROW_BEGIN
        TAP(0); TAP(c1); TAP(c2); TAP(r1); TAP(r1 + c1); TAP(r1 + c2); TAP(r2); TAP(r2 + c1); TAP(r2 + c2);
    ROW_END
}

static void NAME(window_row_1x1)(ROW_ARGS) {
    (void)kh; (void)kw; (void)dh; (void)dw; (void)wp;
    ROW_BEGIN TAP(0); ROW_END
}

static void NAME(window_row_any)(ROW_ARGS) {
    ROW_BEGIN
        for (int64_t ka = 0; ka < kh; ka++)
            for (int64_t kb = 0; kb < kw; kb++) TAP(ka * dh * wp + kb * dw);
    ROW_END
}
#undef TAP
#undef ROW_BEGIN
#undef ROW_END
#undef ROW_ARGS

/* Patch statistics of `rows` output rows from the zero-padded slab (pitch wp); results with pitch wp. */
static void NAME(window_stats)(const NAME(dw_args) *a, const T *restrict slab, int64_t rows, int64_t wp,
                               T *restrict S, T *restrict P, T *restrict Q, T *restrict QP, T *restrict QN,
                               T *restrict MX, T *restrict MN, T *restrict MA) {
    const int64_t kh = a->kh, kw = a->kw, dh = a->dh, dw = a->dw, w = a->w;
    if (a->sh == 1 && a->sw == 1) {  /* all rows as one flattened row; the columns past w are ignored */
        if (kh == 3 && kw == 3) NAME(window_row_3x3)((rows - 1) * wp + w, wp, dh, dw, kh, kw, slab, S, P, Q, QP, QN,
                                                     MX, MN, MA);
        else if (kh == 1 && kw == 1) NAME(window_row_1x1)((rows - 1) * wp + w, wp, dh, dw, kh, kw, slab, S, P, Q,
                                                          QP, QN, MX, MN, MA);
        else NAME(window_row_any)((rows - 1) * wp + w, wp, dh, dw, kh, kw, slab, S, P, Q, QP, QN, MX, MN, MA);
        return;
    }
    for (int64_t i = 0; i < rows; i++) {
        const int64_t o = i * wp;
        for (int64_t j = 0; j < w; j++) {
            S[o + j] = 0; P[o + j] = 0; Q[o + j] = 0; QP[o + j] = 0; QN[o + j] = 0;
            MX[o + j] = -INFINITY; MN[o + j] = INFINITY; MA[o + j] = INFINITY;
        }
        for (int64_t ka = 0; ka < kh; ka++)
            for (int64_t kb = 0; kb < kw; kb++) {
                const T *restrict src = slab + (i * a->sh + ka * dh) * wp + kb * dw;
                const int64_t sw = a->sw;
                for (int64_t j = 0; j < w; j++) {
                    const T v = src[j * sw], pv = POS(v), nv = pv - v, av = pv + nv;
                    S[o + j] += v; P[o + j] += pv; Q[o + j] += nv; QP[o + j] += pv * pv; QN[o + j] += nv * nv;
                    MX[o + j] = MAX(v, MX[o + j]); MN[o + j] = MIN(v, MN[o + j]);
                    MA[o + j] = MIN(av, MA[o + j]);
                }
            }
    }
}

/* Fold one channel's products into the accumulators, over `w` flattened entries. */
static void NAME(fold_row)(int64_t w, const T *restrict g, const T *restrict S, const T *restrict P,
                           const T *restrict Q, const T *restrict QP, const T *restrict QN, const T *restrict MX,
                           const T *restrict MN, const T *restrict MA, T *restrict osum, T *restrict osq,
                           T *restrict os0, T *restrict os1, T *restrict oq0, T *restrict oq1, T *restrict omx,
                           T *restrict omn, T *restrict oma) {
    for (int64_t j = 0; j < w; j++) {
        const T gv = g[j], gp = POS(gv), gn = gp - gv, ag = gp + gn, gp2 = gp * gp, gn2 = gn * gn;
        osum[j] += gv * S[j];
        osq[j] += gv * gv * (QP[j] + QN[j]);
        os0[j] += gp * P[j] + gn * Q[j];
        os1[j] += gp * Q[j] + gn * P[j];
        oq0[j] += gp2 * QP[j] + gn2 * QN[j];
        oq1[j] += gp2 * QN[j] + gn2 * QP[j];
        const T e1 = gp * MX[j] - gn * MN[j], e2 = gp * MN[j] - gn * MX[j], e3 = ag * MA[j];
        omx[j] = MAX(e1, omx[j]);
        omn[j] = MIN(e2, omn[j]);
        oma[j] = MIN(e3, oma[j]);
    }
}

/* Output rows per work item: the item's accumulators (T targets x 9 statistics) stay in cache. */
static int64_t NAME(dw_block)(const NAME(dw_args) *a, int64_t wp) {
    int64_t block = DW_BLOCK / (wp * a->Tt);
    const int64_t share = (a->N * a->h + a->threads - 1) / a->threads;  /* no thread left without rows */
    if (block > share) block = share;
    if (block < 1) block = 1;
    return block > a->h ? a->h : block;
}

/* Items lo..hi of the flattened (n, block of output rows) grid. Everything inside an item has pitch wp (the
 * padded slab's width): window statistics, a copy of the gradient rows and the accumulators, so each loop runs over
 * the item's rows as one flattened row; the accumulators are written out once, after the last channel. */
static void NAME(dw_work)(void *p, int64_t lo, int64_t hi) {
    NAME(dw_args) *a = (NAME(dw_args) *)p;
    const int64_t h = a->h, w = a->w, H = a->H, W = a->W, C = a->C, Tt = a->Tt;
    const int64_t wp = (w - 1) * a->sw + (a->kw - 1) * a->dw + 1;  /* padded slab width, >= w */
    const int64_t block = NAME(dw_block)(a, wp), blocks = (h + block - 1) / block, area = block * wp;
    const int64_t slab_rows = (block - 1) * a->sh + (a->kh - 1) * a->dh + 1;
    T *buf = (T *)calloc((size_t)(slab_rows * wp + (W_COUNT + 1 + D_COUNT * Tt) * area), sizeof(T));
    if (!buf) { __atomic_store_n(&a->failed, 1, __ATOMIC_RELAXED); return; }
    T *slab = buf, *st[W_COUNT], *gbuf = buf + slab_rows * wp + W_COUNT * area, *acc = gbuf + area;
    for (int k = 0; k < W_COUNT; k++) st[k] = buf + slab_rows * wp + k * area;
    /* slab columns that read input columns (the rest are padding): [c0, c1), within the slab row */
    int64_t c0 = a->pl < 0 ? 0 : a->pl, c1 = W + a->pl < wp ? W + a->pl : wp;
    if (c0 > wp) c0 = wp;
    if (c1 < c0) c1 = c0;
    for (int64_t item = lo; item < hi; item++) {
        const int64_t n = item / blocks, i0 = (item % blocks) * block, i1 = i0 + block < h ? i0 + block : h;
        const int64_t r0 = i0 * a->sh - a->pt, rows = (i1 - 1 - i0) * a->sh + (a->kh - 1) * a->dh + 1;
        const int64_t len = (i1 - i0 - 1) * wp + w;  /* flattened extent of the item's rows */
        for (int64_t t = 0; t < Tt; t++)
            for (int d = 0; d < D_COUNT; d++) {
                T *o = acc + (t * D_COUNT + d) * area;
                const T init = d == D_MAX ? -INFINITY : (d == D_MIN || d == D_MIN_ABS) ? INFINITY : (T)0;
                for (int64_t u = 0; u < len; u++) o[u] = init;
            }
        for (int64_t c = 0; c < C; c++) {
            const T *xc = a->x + (n * C + c) * H * W;
            for (int64_t r = 0; r < rows; r++) {  /* zero-padded copy of the input rows this item reads */
                T *dst = slab + r * wp;
                const int64_t ir = r0 + r;
                if (ir < 0 || ir >= H) { memset(dst, 0, sizeof(T) * (size_t)wp); continue; }
                if (c0 > 0) memset(dst, 0, sizeof(T) * (size_t)c0);
                if (c1 > c0) memcpy(dst + c0, xc + ir * W + (c0 - a->pl), sizeof(T) * (size_t)(c1 - c0));
                if (c1 < wp) memset(dst + c1, 0, sizeof(T) * (size_t)(wp - c1));
            }
            NAME(window_stats)(a, slab, i1 - i0, wp, st[W_SUM], st[W_POS], st[W_NEG], st[W_POS_SQ], st[W_NEG_SQ],
                               st[W_MAX], st[W_MIN], st[W_MIN_ABS]);
            for (int64_t t = 0; t < Tt; t++) {
                const T *gc = a->g + (((n * Tt + t) * C + c) * h + i0) * w;
                for (int64_t i = 0; i < i1 - i0; i++) memcpy(gbuf + i * wp, gc + i * w, sizeof(T) * (size_t)w);
                T *o = acc + t * D_COUNT * area;
                NAME(fold_row)(len, gbuf, st[W_SUM], st[W_POS], st[W_NEG], st[W_POS_SQ], st[W_NEG_SQ], st[W_MAX],
                               st[W_MIN], st[W_MIN_ABS], o, o + area, o + 2 * area, o + 3 * area, o + 4 * area,
                               o + 5 * area, o + 6 * area, o + 7 * area, o + 8 * area);
            }
        }
        for (int64_t t = 0; t < Tt; t++) {  /* NaN fix-up (see MAX): the signed sums carry NaN reliably */
            T *o = acc + t * D_COUNT * area;
            for (int64_t u = 0; u < len; u++)
                if (o[D_SIGNED0 * area + u] != o[D_SIGNED0 * area + u]) {
                    const T nan = o[D_SIGNED0 * area + u];
                    o[D_MAX * area + u] = nan; o[D_MIN * area + u] = nan; o[D_MIN_ABS * area + u] = nan;
                }
        }
        for (int64_t t = 0; t < Tt; t++)
            for (int d = 0; d < D_COUNT; d++)
                for (int64_t i = 0; i < i1 - i0; i++)
                    memcpy(a->out[d] + ((n * Tt + t) * h + i0 + i) * w, acc + (t * D_COUNT + d) * area + i * wp,
                           sizeof(T) * (size_t)w);
    }
    free(buf);
}

int NAME(depthwise_stats)(const T *g, const T *x, const int64_t *dims, const int64_t *geo, T **out, int threads) {
    NAME(dw_args) a;
    a.g = g; a.x = x;
    a.N = dims[0]; a.Tt = dims[1]; a.C = dims[2]; a.h = dims[3]; a.w = dims[4]; a.H = dims[5]; a.W = dims[6];
    a.kh = geo[0]; a.kw = geo[1]; a.sh = geo[2]; a.sw = geo[3]; a.pt = geo[4]; a.pl = geo[5];
    a.dh = geo[6]; a.dw = geo[7]; a.failed = 0; a.threads = threads < 1 ? 1 : threads;
    for (int s = 0; s < D_COUNT; s++) a.out[s] = out[s];
    if (a.N <= 0 || a.h <= 0 || a.w <= 0 || a.C <= 0) return 0;
    const int64_t block = NAME(dw_block)(&a, (a.w - 1) * a.sw + (a.kw - 1) * a.dw + 1);
    parallel_for(a.N * ((a.h + block - 1) / block), threads, NAME(dw_work), &a);
    return a.failed;
}

#endif /* KERNEL_BODY */
