/* What every backend shares (backend.h): below comm.c's dispatch and the
 * backends, so that they do not call back into the file that calls them. */
#include "backend.h"

#include <stdio.h>

size_t comm_type_size(CommType type)
{
    switch (type) {
    case COMM_F32: return 4;
    case COMM_F64: return 8;
    case COMM_I64: return 8;
    case COMM_BYTE: return 1;
    }
    return 1;
}

int comm_fail(Comm *comm, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(comm->error, sizeof(comm->error), format, args);
    va_end(args);
    return -1;
}

int comm_break(Comm *comm, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(comm->error, sizeof(comm->error), format, args);
    va_end(args);
    comm->broken = true;
    return -1;
}
