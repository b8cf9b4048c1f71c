/* runtime.c -- thread count, OpenMP presence and the ABI version. */
#include "internal.h"

#ifdef _OPENMP
static int g_nthreads = 0; /* 0: not set yet, use OpenMP's default */
#endif

int pyllm_abi_version(void) { return PYLLM_ABI_VERSION; }

int pyllm_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int pyllm_nthreads(void) {
#ifdef _OPENMP
    if (g_nthreads <= 0) g_nthreads = omp_get_max_threads();
    return g_nthreads;
#else
    return 1;
#endif
}

int pyllm_get_num_threads(void) { return pyllm_nthreads(); }

int pyllm_set_num_threads(int n) {
    if (n < 1) return PYLLM_ERR_SIZE;
#ifdef _OPENMP
    g_nthreads = n;
#endif
    return PYLLM_OK;
}
