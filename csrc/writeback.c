/* Write-behind for the .lmp writer: start the disk write of a file range now, without waiting.
 *
 * A converter writes far more than the page cache lets it keep dirty, and the file must be on
 * disk (fsync) before it is renamed into place. Waiting for all of it at the end, or in large
 * fdatasync steps, idles the CPU while the disk works. sync_file_range starts writing a range
 * as soon as it is complete and, one range later, waits for it, so encoding, copying into the
 * page cache and the disk all run at once and dirty memory stays at about two ranges. The
 * final fsync still gives durability (sync_file_range alone flushes neither metadata nor the
 * disk's cache).
 */
#define _GNU_SOURCE
#include "pyapi.h"

#if defined(__linux__)
#include <errno.h>
#include <fcntl.h>
#endif

PyObject *lmp_py_write_behind(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    long long offset, nbytes;
    int wait;
    if (!PyArg_ParseTuple(args, "iLLp:write_behind", &fd, &offset, &nbytes, &wait)) return NULL;
    if (fd < 0 || offset < 0 || nbytes < 0) {
        PyErr_SetString(PyExc_ValueError, "write_behind: fd, offset and nbytes must be non-negative");
        return NULL;
    }
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
    /* waiting (on the range started one step ago): for its writes in flight, then for any page
     * the first pass skipped, so no more than about two ranges are ever dirty */
    unsigned int flags = wait ? SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
                              : SYNC_FILE_RANGE_WRITE;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sync_file_range(fd, (off_t)offset, (off_t)nbytes, flags);
    Py_END_ALLOW_THREADS
    if (rc == 0) Py_RETURN_TRUE;
    if (errno == ENOSYS || errno == EINVAL || errno == ESPIPE) Py_RETURN_FALSE; /* not here: caller syncs */
    return PyErr_SetFromErrno(PyExc_OSError);
#else
    (void)wait;
    Py_RETURN_FALSE;
#endif
}
