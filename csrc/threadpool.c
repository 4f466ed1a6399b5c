/* The persistent worker pool behind every parallel region of the forward pass (threadpool.h).
 *
 * Hand-off protocol. One atomic `ticket` holds (job id << 24 | next task index). The caller
 * writes a job into the slot for its id (two slots, alternating), then publishes the ticket
 * (job id + 1, index 0) under the mutex and wakes the workers. Everyone, caller included, claims
 * tasks by compare-and-swap on the ticket, which succeeds only while the ticket still names the
 * job they read; a finished task bumps `done`, and the caller returns when done == ntasks.
 *
 * Why not wait for every worker to check in: on a busy machine a descheduled worker would hold
 * up every parallel region for a whole timeslice. Here the caller (and whichever workers are
 * awake) simply run all the tasks; a worker that wakes late finds the ticket on another job and
 * its compare-and-swap fails, so it can never run a task of a job it did not read.
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
 * microseconds, so a short spin saves the futex round trip; it is bounded (tens of microseconds)
 * so idle workers between steps go to sleep instead of burning a core. */
#define SPIN_POLLS 2000

#define INDEX_BITS 24
#define INDEX_MASK ((UINT64_C(1) << INDEX_BITS) - 1)
#define MAX_TASKS ((int64_t)INDEX_MASK) /* larger jobs run as several */

typedef struct {
    _Atomic(lmp_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_int_fast64_t ntasks;
} job_slot;

struct lmp_pool {
    int nthreads; /* including the caller */
    pthread_t *threads;
    int nstarted;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* caller -> workers: a new job or stop */
    pthread_cond_t done_cv; /* last task -> caller */
    atomic_uint_fast64_t ticket;
    atomic_int_fast64_t done;
    atomic_int stop;
    job_slot slots[2];
    uint64_t job; /* caller-side id of the current job */
};

typedef struct {
    lmp_pool *pool;
    int index;
} worker_arg;

/* Claims and runs tasks of job `job` until they run out or the ticket moves on. */
static void run_tasks(lmp_pool *p, uint64_t job, int thread) {
    const job_slot *s = &p->slots[job & 1];
    lmp_task_fn fn = atomic_load_explicit(&s->fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&s->ctx, memory_order_relaxed);
    int64_t ntasks = atomic_load_explicit(&s->ntasks, memory_order_relaxed);
    uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    for (;;) {
        if ((t >> INDEX_BITS) != job || (int64_t)(t & INDEX_MASK) >= ntasks) return;
        /* on success the slot read above is this job's (the ticket only moves to a new job
         * after every task of this one is done); on failure t is reloaded */
        if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        fn(ctx, (int64_t)(t & INDEX_MASK), thread);
        if (atomic_fetch_add_explicit(&p->done, 1, memory_order_acq_rel) + 1 == ntasks) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
        t = atomic_load_explicit(&p->ticket, memory_order_acquire);
    }
}

static void *worker_main(void *argp) {
    worker_arg arg = *(worker_arg *)argp;
    free(argp);
    lmp_pool *p = arg.pool;
    uint64_t seen = 0;
    for (;;) {
        uint64_t job = atomic_load_explicit(&p->ticket, memory_order_acquire) >> INDEX_BITS;
        for (int s = 0; job == seen && s < SPIN_POLLS && !atomic_load(&p->stop); s++) {
            CPU_RELAX();
            job = atomic_load_explicit(&p->ticket, memory_order_acquire) >> INDEX_BITS;
        }
        if (job == seen) {
            pthread_mutex_lock(&p->mu);
            while ((job = atomic_load_explicit(&p->ticket, memory_order_acquire) >> INDEX_BITS) == seen &&
                   !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = job;
        run_tasks(p, job, arg.index);
    }
}

lmp_pool *lmp_pool_create(int nthreads) {
    if (nthreads < 1) nthreads = 1;
    lmp_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->nthreads = nthreads;
    atomic_init(&p->ticket, 0);
    atomic_init(&p->done, 0);
    atomic_init(&p->stop, 0);
    for (int i = 0; i < 2; i++) {
        atomic_init(&p->slots[i].fn, NULL);
        atomic_init(&p->slots[i].ctx, NULL);
        atomic_init(&p->slots[i].ntasks, 0);
    }
    if (nthreads == 1) return p;
    p->threads = calloc((size_t)(nthreads - 1), sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    if (pthread_mutex_init(&p->mu, NULL) != 0) goto fail_mutex;
    if (pthread_cond_init(&p->wake, NULL) != 0) goto fail_wake;
    if (pthread_cond_init(&p->done_cv, NULL) != 0) goto fail_done;
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
    if (ntasks > MAX_TASKS) {
        /* more tasks than the ticket's index field holds: only an absurd config (millions of
         * heads) gets here, and running it serially keeps it correct */
        for (int64_t i = 0; i < ntasks; i++) fn(ctx, i, 0);
        return;
    }
    uint64_t job = ++p->job;
    job_slot *s = &p->slots[job & 1];
    atomic_store_explicit(&s->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&s->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&s->ntasks, ntasks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->ticket, job << INDEX_BITS, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);

    run_tasks(p, job, 0);

    for (int s2 = 0; s2 < SPIN_POLLS && atomic_load_explicit(&p->done, memory_order_acquire) < ntasks; s2++)
        CPU_RELAX();
    if (atomic_load_explicit(&p->done, memory_order_acquire) < ntasks) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load_explicit(&p->done, memory_order_acquire) < ntasks) pthread_cond_wait(&p->done_cv, &p->mu);
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
        pthread_cond_destroy(&p->done_cv);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
        free(p->threads);
    }
    free(p);
}
