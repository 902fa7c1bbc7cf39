/*
 * Storage dtypes on the command line: the .npy descr of each, and conversion to and from float32
 * (round to nearest even), for making inputs and comparing outputs.
 */
#ifndef MOBA_TOOLS_DTYPE_H
#define MOBA_TOOLS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "moba.h"

/* "<f4", "<f2", "<u2" (raw bfloat16 bits) */
const char *dtype_descr(moba_dtype t);
/* 0 and *t set when descr is a storage dtype, else -1 */
int dtype_from_descr(const char *descr, moba_dtype *t);
const char *dtype_name(moba_dtype t);

float bf16_to_float(uint16_t bits);
uint16_t float_to_bf16(float x);
float f16_to_float(uint16_t bits);
uint16_t float_to_f16(float x);

/* dst[i] = src[i] stored as t / read from t, for n elements */
void dtype_store(moba_dtype t, const float *src, void *dst, size_t n);
void dtype_load(moba_dtype t, const void *src, float *dst, size_t n);

#endif
