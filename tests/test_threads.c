/*
 * Thread safety: threads calling at once with different bad arguments each read their own
 * moba_last_error() message, and a thread making valid calls meanwhile gets the same bits as a
 * call made alone (the library keeps no shared state but the per-thread message).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "check.h"
#include "moba.h"
#include "ref64.h"

enum { T = 40, H = 2, D = 16, ITERS = 20000 };

static atomic_int started; /* threads spin until all have started, so the calls overlap */

static float q[T * H * D], k[T * H * D], v[T * H * D], o_alone[T * H * D];
static int32_t cu[3] = {0, 17, T};

static void valid_params(moba_params *p) {
    moba_params_init(p);
    ref_set_problem(p, MOBA_DTYPE_F32, 2, cu, H, H, D, 8, 2);
    p->num_threads = 1;
}

typedef struct {
    int which;      /* 0: bad num_seqs, 1: bad head_dim, 2: valid calls */
    int failures;   /* counted here: CHECK's counters are not thread safe */
    char first[256];
} job;

static void *worker(void *arg) {
    job *j = arg;
    moba_params p;
    valid_params(&p);
    if (j->which == 0) p.num_seqs = 0;
    if (j->which == 1) p.head_dim = 0;
    const char *mine = j->which == 0 ? "num_seqs" : "head_dim", *theirs = j->which == 0 ? "head_dim" : "num_seqs";
    float *o = malloc(sizeof o_alone);
    atomic_fetch_add(&started, 1);
    while (atomic_load(&started) < 3) {
    }
    for (int it = 0; it < ITERS / (j->which == 2 ? 100 : 1); it++) {
        moba_status st = moba_forward(&p, q, k, v, o, NULL, NULL, 0);
        const char *msg = moba_last_error();
        int ok = j->which == 2 ? st == MOBA_OK && !memcmp(o, o_alone, sizeof o_alone)
                               : st == MOBA_ERR_INVALID_ARGUMENT && strstr(msg, mine) && !strstr(msg, theirs);
        if (!ok && j->failures++ == 0) snprintf(j->first, sizeof j->first, "iteration %d: status %d, '%s'", it, st, msg);
    }
    free(o);
    return NULL;
}

int main(void) {
    for (int i = 0; i < T * H * D; i++) {
        q[i] = (float)((i * 7919) % 101) / 50.0f - 1.0f;
        k[i] = (float)((i * 104729) % 97) / 48.0f - 1.0f;
        v[i] = (float)((i * 1299709) % 89) / 44.0f - 1.0f;
    }
    moba_params p;
    valid_params(&p);
    CHECK_FATAL(moba_forward(&p, q, k, v, o_alone, NULL, NULL, 0) == MOBA_OK, "valid call: %s", moba_last_error());

    job jobs[3] = {{0, 0, ""}, {1, 0, ""}, {2, 0, ""}};
    pthread_t th[3];
    for (int i = 0; i < 3; i++) CHECK_FATAL(pthread_create(&th[i], NULL, worker, &jobs[i]) == 0, "pthread_create");
    for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    const char *names[3] = {"bad num_seqs", "bad head_dim", "valid calls"};
    for (int i = 0; i < 3; i++)
        CHECK(jobs[i].failures == 0, "thread '%s': %d failures, first: %s", names[i], jobs[i].failures, jobs[i].first);

    /* the main thread's message is its own too: it made no failing call, so "" */
    CHECK(moba_last_error() && moba_last_error()[0] == 0, "main thread sees '%s'", moba_last_error());
    return check_done("test_threads");
}
