/* The persistent worker pool behind every parallel region of the forward pass (threadpool.h).
 *
 * Hand-off protocol: the caller publishes a job (fn, ctx, ntasks) and bumps `generation` under
 * the mutex; each worker notices the new generation (by a short spin, then on the `wake`
 * condition variable), pulls task indices from an atomic counter until they run out, and checks
 * out by decrementing `active`. The caller runs tasks too and returns only when every worker has
 * checked out, so the next job can never be mixed with a straggler of the previous one.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

/* Polls before sleeping. Parallel regions of one forward step follow each other within
 * microseconds, so a short spin saves the futex round trip; it is bounded (a few tens of
 * microseconds) so idle workers between steps go to sleep instead of burning a core. */
#define SPIN_POLLS 2000

struct lmp_pool {
    int nthreads; /* including the caller */
    pthread_t *threads;
    int nstarted;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* caller -> workers: a new generation or stop */
    pthread_cond_t done; /* last worker -> caller: active reached zero */
    atomic_uint_fast64_t generation;
    atomic_int stop;
    atomic_int active;
    atomic_int_fast64_t next;
    /* the current job; written by the caller before the generation bump (release) */
    lmp_task_fn fn;
    void *ctx;
    int64_t ntasks;
};

typedef struct {
    lmp_pool *pool;
    int index;
} worker_arg;

static void run_tasks(lmp_pool *p, int thread) {
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->ntasks) break;
        p->fn(p->ctx, i, thread);
    }
}

static void *worker_main(void *argp) {
    worker_arg arg = *(worker_arg *)argp;
    free(argp);
    lmp_pool *p = arg.pool;
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t gen = atomic_load_explicit(&p->generation, memory_order_acquire);
        for (int s = 0; gen == seen && s < SPIN_POLLS && !atomic_load(&p->stop); s++) {
            CPU_RELAX();
            gen = atomic_load_explicit(&p->generation, memory_order_acquire);
        }
        if (gen == seen) {
            pthread_mutex_lock(&p->mu);
            while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
                   !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = gen;
        run_tasks(p, arg.index);
        if (atomic_fetch_sub_explicit(&p->active, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

lmp_pool *lmp_pool_create(int nthreads) {
    if (nthreads < 1) nthreads = 1;
    lmp_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->nthreads = nthreads;
    atomic_init(&p->generation, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->active, 0);
    atomic_init(&p->next, 0);
    if (nthreads == 1) return p;
    p->threads = calloc((size_t)(nthreads - 1), sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) goto fail_mutex;
    if (pthread_cond_init(&p->wake, NULL) != 0) goto fail_wake;
    if (pthread_cond_init(&p->done, NULL) != 0) goto fail_done;
    for (int i = 0; i < nthreads - 1; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a) break;
        a->pool = p;
        a->index = i + 1; /* 0 is the caller */
        if (pthread_create(&p->threads[i], NULL, worker_main, a) != 0) {
            free(a);
            break;
        }
        p->nstarted++;
    }
    if (p->nstarted == nthreads - 1) return p;
    lmp_pool_destroy(p);
    return NULL;
fail_done:
    pthread_cond_destroy(&p->wake);
fail_wake:
    pthread_mutex_destroy(&p->mu);
fail_mutex:
    free(p->threads);
    free(p);
    return NULL;
}

void lmp_pool_run(lmp_pool *p, int64_t ntasks, lmp_task_fn fn, void *ctx) {
    if (ntasks <= 0) return;
    if (p->nthreads == 1 || ntasks == 1) {
        for (int64_t i = 0; i < ntasks; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->ntasks = ntasks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->active, p->nthreads - 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    run_tasks(p, 0);

    for (int s = 0; s < SPIN_POLLS && atomic_load_explicit(&p->active, memory_order_acquire) > 0; s++)
        CPU_RELAX();
    if (atomic_load_explicit(&p->active, memory_order_acquire) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load_explicit(&p->active, memory_order_acquire) > 0)
            pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

int lmp_pool_size(const lmp_pool *p) { return p->nthreads; }

void lmp_pool_destroy(lmp_pool *p) {
    if (!p) return;
    if (p->nthreads > 1) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, 1);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->nstarted; i++) pthread_join(p->threads[i], NULL);
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
        free(p->threads);
    }
    free(p);
}
