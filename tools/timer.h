/* A monotonic wall clock for timing runs (seconds as a double). */
#ifndef MOBA_TOOLS_TIMER_H
#define MOBA_TOOLS_TIMER_H

#include <time.h>

static inline double timer_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
