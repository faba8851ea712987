/* The memory-read bandwidth of the host, measured as STREAM does: the bound of a memory-bound step
 * (decode reads every weight once) on a device whose memory is host memory (lavapipe). */
#ifndef EC_READ_BANDWIDTH_H
#define EC_READ_BANDWIDTH_H

#include <stddef.h>

/* Bytes read per second (best of `reps` passes) when `threads` threads each sum their share of a
 * buffer of `bytes` bytes; 0 when memory or threads cannot be had. */
double ec_read_bandwidth(size_t bytes, int threads, int reps);

#endif
