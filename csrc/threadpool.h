/* A persistent pool of worker threads running one parallel-for at a time.
 *
 * Created once per Model: the threads live as long as the pool and sleep on a condition
 * variable between jobs, so a forward step pays a wake-up per parallel region, never a thread
 * creation. The caller's thread takes part in every job; a pool of one thread has no workers and
 * runs every job inline.
 */
#ifndef LMPACK_THREADPOOL_H
#define LMPACK_THREADPOOL_H

#include <stdint.h>

typedef struct lmp_pool lmp_pool;

/* One unit of a job: `task` in [0, ntasks), `thread` in [0, pool size) names the running thread
 * (a stable index, so tasks can use per-thread scratch). */
typedef void (*lmp_task_fn)(void *ctx, int64_t task, int thread);

/* NULL if a thread or the pool cannot be created (nthreads < 1 is treated as 1). */
lmp_pool *lmp_pool_create(int nthreads);

/* Runs fn(ctx, i, thread) for every i in [0, ntasks), tasks handed out dynamically, and returns
 * when all are done. Not reentrant: one job at a time per pool. */
void lmp_pool_run(lmp_pool *pool, int64_t ntasks, lmp_task_fn fn, void *ctx);

int lmp_pool_size(const lmp_pool *pool);

/* Wakes the workers, joins them and frees the pool; NULL is a no-op. */
void lmp_pool_destroy(lmp_pool *pool);

#endif
