#include "errors.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_message[1024];
static _Thread_local ec_status last_code;

ec_status ec_fail(ec_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    last_code = code;
    return code;
}

const char *ec_last_error(void) { return last_message[0] ? last_message : "unknown error"; }
ec_status ec_last_status(void) { return last_code; }
void ec_clear_error(void) { last_message[0] = 0; last_code = EC_OK; }
