/* Error reporting for the C core: every failing function returns a non-zero ec_status and leaves a
 * message in a thread-local buffer, which the Python binding turns into an exception. Nothing in the
 * core aborts the process. */
#ifndef EC_ERRORS_H
#define EC_ERRORS_H

typedef enum {
    EC_OK = 0,
    EC_ERR_ARG,        /* bad arguments: shapes, dtypes, options      -> ValueError            */
    EC_ERR_IO,         /* a file could not be opened, read or mapped  -> OSError               */
    EC_ERR_FORMAT,     /* a file's contents are invalid (safetensors, image) -> eyecare.FormatError */
    EC_ERR_NO_DEVICE,  /* no Vulkan driver or no usable device        -> eyecare.NoDeviceError  */
    EC_ERR_DEVICE,     /* the Vulkan device reported a failure        -> eyecare.DeviceError    */
    EC_ERR_OOM,        /* out of device (or host) memory              -> eyecare.DeviceMemoryError */
    EC_ERR_LIMIT,      /* a configured limit was exceeded (pixels, context length) -> ValueError */
    EC_ERR_INTERRUPTED /* the caller asked to stop (KeyboardInterrupt)                         */
} ec_status;

/* Records the message (printf-style) and returns code, so callers can `return ec_fail(...)`. */
ec_status ec_fail(ec_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ec_last_error(void);
ec_status ec_last_status(void);
void ec_clear_error(void);

#define EC_TRY(expr) do { ec_status _s = (expr); if (_s != EC_OK) return _s; } while (0)

#endif
