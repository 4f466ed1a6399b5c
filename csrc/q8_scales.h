/* The fp16 block scales of 8 Q8_0 weight rows in block order, for the x86 GEMVs (kernels_avx2.c,
 * kernels_avx512.c), which fold one or two blocks of 8 rows at a time and want those rows' scales
 * side by side. The file stores them row by row (nb per row), so a block's 8 scales are 8 strided
 * words: gathering them per block costs more than the block's whole dot on AMD, where VPGATHERDD
 * is microcoded. Instead 16 blocks of the 8 rows are loaded at once (one 32-byte load per row) and
 * transposed as 16-bit words (24 unpacks, within 128-bit lanes).
 *
 * Include after the file's AVX2 target pragma and its INLINE and UNROLL macros. */
#ifndef LMPACK_Q8_SCALES_H
#define LMPACK_Q8_SCALES_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* out[8k + i] = ws[i*nb + b + k], the scale of block b+k of row i, for k < min(16, nb - b) and
 * i < nr <= 8; rows past nr give 0 (and so do blocks past nb). */
INLINE void q8_scales_8x16(const uint16_t *ws, int64_t nb, int64_t b, int nr, uint16_t out[16 * 8]) {
    const int64_t n = nb - b < 16 ? nb - b : 16;
    __m256i r[8], a[8], c[8];
    UNROLL for (int i = 0; i < 8; i++) {
        if (i >= nr) {
            r[i] = _mm256_setzero_si256();
        } else if (n == 16) {
            r[i] = _mm256_loadu_si256((const __m256i *)(ws + i * nb + b));
        } else { /* the row's last blocks: the array may end right after them */
            uint16_t t[16] = {0};
            memcpy(t, ws + i * nb + b, (size_t)n * sizeof(uint16_t));
            r[i] = _mm256_loadu_si256((const __m256i *)t);
        }
    }
    /* per 128-bit lane (blocks 0-7 | 8-15) an 8x8 transpose of words */
    UNROLL for (int i = 0; i < 4; i++) { /* rows 2i, 2i+1 interleaved: blocks 0-3 | 4-7 */
        a[i] = _mm256_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
        a[4 + i] = _mm256_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
    }
    UNROLL for (int h = 0; h < 2; h++) /* c[4h+2q+m]: rows 4q..4q+3, blocks 4h+2m, 4h+2m+1 */
        UNROLL for (int q = 0; q < 2; q++) {
            c[4 * h + 2 * q] = _mm256_unpacklo_epi32(a[4 * h + 2 * q], a[4 * h + 2 * q + 1]);
            c[4 * h + 2 * q + 1] = _mm256_unpackhi_epi32(a[4 * h + 2 * q], a[4 * h + 2 * q + 1]);
        }
    UNROLL for (int h = 0; h < 2; h++)
        UNROLL for (int m = 0; m < 2; m++)
            UNROLL for (int o = 0; o < 2; o++) { /* block 4h+2m+o (and 8 + it in the high lane) */
                const int k = 4 * h + 2 * m + o;
                const __m256i s = o ? _mm256_unpackhi_epi64(c[4 * h + m], c[4 * h + 2 + m])
                                    : _mm256_unpacklo_epi64(c[4 * h + m], c[4 * h + 2 + m]);
                _mm_storeu_si128((__m128i *)(out + 8 * k), _mm256_castsi256_si128(s));
                _mm_storeu_si128((__m128i *)(out + 8 * (8 + k)), _mm256_extracti128_si256(s, 1));
            }
}

#endif
