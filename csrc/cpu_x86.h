/* cpuid on x86, for the files that read the CPU: dispatch.c (features) and gemv_prefetch.c
 * (vendor). Defines LMP_X86 on x86-64; elsewhere it declares nothing. */
#ifndef LMPACK_CPU_X86_H
#define LMPACK_CPU_X86_H

#if defined(__x86_64__) || defined(_M_X64)
#define LMP_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif

/* r = EAX, EBX, ECX, EDX of cpuid leaf/subleaf */
static inline void lmp_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
#if defined(_MSC_VER)
    int v[4];
    __cpuidex(v, (int)leaf, (int)sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)v[i];
#else
    r[0] = r[1] = r[2] = r[3] = 0;
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}
#endif

#endif
