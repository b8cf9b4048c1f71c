/* internal.h -- helpers shared by the kernel files; not part of the ABI. */
#ifndef PYLLM_INTERNAL_H
#define PYLLM_INTERNAL_H
#include "pyllm.h"
#include <math.h>

#define PYLLM_PRAGMA(x) _Pragma(#x)

#ifdef _OPENMP
#include <omp.h>
/* Split a loop over independent outputs across pyllm's thread count. */
#define PYLLM_PARALLEL_FOR _Pragma("omp parallel for num_threads(pyllm_nthreads()) schedule(static)")
/* The same, only when cond holds: a loop of one task (or too little work to pay for waking the
   other threads, as in the one-token decode step) runs on the calling thread alone. */
#define PYLLM_PARALLEL_FOR_IF(cond) \
    PYLLM_PRAGMA(omp parallel for num_threads(pyllm_nthreads()) if(cond) schedule(static))
#define PYLLM_PARALLEL_FOR_DYNAMIC \
    _Pragma("omp parallel for num_threads(pyllm_nthreads()) schedule(dynamic, 1)")
#else
#define PYLLM_PARALLEL_FOR
#define PYLLM_PARALLEL_FOR_IF(cond)
#define PYLLM_PARALLEL_FOR_DYNAMIC
#endif

/* Flat loops over n elements are cut into blocks of this many so that the OpenMP loop index is
   a plain int (MSVC's OpenMP 2.0) while offsets stay size_t. */
#define PYLLM_FLAT_BLOCK 16384

static inline int pyllm_nblocks(int64_t n) {
    return (int)((n + PYLLM_FLAT_BLOCK - 1) / PYLLM_FLAT_BLOCK);
}

#endif
