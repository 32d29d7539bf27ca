/*
 * The undo journal that lets parley-chaos emulate a power loss: LD_PRELOAD
 * loads this library into each `parley node` the tool starts. Before every
 * pwrite to a file under $PARLEY_CRASH_DIR it appends the bytes that the
 * write overwrites to $PARLEY_CRASH_JOURNAL. It also appends a sync mark
 * for every fsync, fdatasync and waiting sync_file_range. After SIGKILL,
 * the tool undoes every write that no later sync covered (see crash.rs), so
 * the files keep only what the node made durable.
 *
 * A process crash keeps the kernel's page cache, so SIGKILL alone loses no
 * written byte: sled 0.34 pwrites every write batch at once. This journal
 * is what makes a missing sync visible.
 *
 * Records (native byte order): kind (1 byte: 'W' write, 'S' synced range,
 * 'F' synced file), path length (u32), path, then for 'W': offset, count,
 * file size before the write, length of the saved bytes (4 x u64) and the
 * saved bytes; for 'S': offset and length (2 x u64, length 0 = to the end).
 *
 * $PARLEY_CRASH_WRITE_DELAY_MS, when set, makes every journaled pwrite
 * wait that long first, one at a time, as a slow disk would.
 *
 * pwrite64, pwrite and write are journaled, which covers how sled writes
 * its log, blobs and snapshots.
 * NOTE: writev, ftruncate, renames and unlinks count as durable at once.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct pending_write {
    char path[PATH_MAX];
    uint64_t offset;
    uint64_t count;
};

static pthread_mutex_t journal_lock = PTHREAD_MUTEX_INITIALIZER;
static int journal_fd = -1;
static int journal_disabled;
static char journal_path[PATH_MAX];
static char tracked_dir[PATH_MAX];
static size_t tracked_dir_len;
static useconds_t write_delay_us;

/* Writes no sync has covered yet; when none remain, the journal is emptied. */
static struct pending_write *pending;
static size_t pending_len;
static size_t pending_capacity;

static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_sync_file_range)(int, off_t, off_t, unsigned int);

static pthread_once_t journal_once = PTHREAD_ONCE_INIT;

/* Reads the settings and opens the journal; runs once per process. */
static void journal_open(void) {
    const char *journal = getenv("PARLEY_CRASH_JOURNAL");
    const char *dir = getenv("PARLEY_CRASH_DIR");
    if (journal == NULL || dir == NULL || strlen(journal) >= PATH_MAX ||
        realpath(dir, tracked_dir) == NULL) {
        journal_disabled = 1;
        return;
    }
    strcpy(journal_path, journal);
    tracked_dir_len = strlen(tracked_dir);
    const char *delay_ms = getenv("PARLEY_CRASH_WRITE_DELAY_MS");
    if (delay_ms != NULL) {
        write_delay_us = (useconds_t)strtoul(delay_ms, NULL, 10) * 1000;
    }
    journal_fd = open(journal_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (journal_fd < 0) {
        journal_disabled = 1;
    }
}

/* Returns 1 when journaling is on. The settings never change after the
 * first call, so callers may read them without journal_lock. */
static int journal_ready(void) {
    pthread_once(&journal_once, journal_open);
    return !journal_disabled;
}

/* Resolves fd's path; returns 1 if it is a file under the tracked dir. */
static int tracked_path(int fd, char *path) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t length = readlink(link, path, PATH_MAX - 1);
    if (length <= 0) {
        return 0;
    }
    path[length] = '\0';
    if (strcmp(path, journal_path) == 0) {
        return 0;
    }
    return strncmp(path, tracked_dir, tracked_dir_len) == 0 &&
           (path[tracked_dir_len] == '/' || path[tracked_dir_len] == '\0');
}

static void append(const void *bytes, size_t length) {
    if (real_write == NULL) {
        real_write = dlsym(RTLD_NEXT, "write");
    }
    const char *cursor = bytes;
    while (length > 0) {
        ssize_t written = real_write(journal_fd, cursor, length);
        if (written <= 0) {
            /* A journal that cannot be written would undo the wrong bytes. */
            abort();
        }
        cursor += written;
        length -= (size_t)written;
    }
}

static void append_header(char kind, const char *path) {
    uint32_t path_length = (uint32_t)strlen(path);
    append(&kind, 1);
    append(&path_length, sizeof path_length);
    append(path, path_length);
}

static void remember_pending(const char *path, uint64_t offset, uint64_t count) {
    if (pending_len == pending_capacity) {
        size_t capacity = pending_capacity == 0 ? 64 : pending_capacity * 2;
        struct pending_write *grown = realloc(pending, capacity * sizeof *pending);
        if (grown == NULL) {
            abort();
        }
        pending = grown;
        pending_capacity = capacity;
    }
    struct pending_write *entry = &pending[pending_len++];
    strcpy(entry->path, path);
    entry->offset = offset;
    entry->count = count;
}

/* Forgets pending writes of path inside [offset, offset + length), where
 * length 0 means up to the end of the file, and empties the journal when
 * none remain. */
static void mark_synced(const char *path, uint64_t offset, uint64_t length) {
    size_t remaining = 0;
    for (size_t index = 0; index < pending_len; index++) {
        struct pending_write *entry = &pending[index];
        int same_file = strcmp(entry->path, path) == 0;
        int inside = entry->offset >= offset &&
                     (length == 0 || entry->offset + entry->count <= offset + length);
        if (!(same_file && inside)) {
            pending[remaining++] = *entry;
        }
    }
    pending_len = remaining;
    if (pending_len == 0 && ftruncate(journal_fd, 0) != 0) {
        abort();
    }
}

/* Journals the bytes a write of count bytes at offset will overwrite, then
 * waits the configured delay. The caller holds journal_lock. */
static void journal_write(int fd, const char *path, uint64_t offset, uint64_t count) {
    /* Save what the write overwrites before it happens, so a kill between
     * the two still leaves a correct journal. */
    struct stat status;
    uint64_t size_before = fstat(fd, &status) == 0 ? (uint64_t)status.st_size : 0;
    uint64_t saved_length = 0;
    char *saved = malloc(count > 0 ? count : 1);
    if (saved == NULL) {
        abort();
    }
    if (offset < size_before) {
        ssize_t read_length = pread(fd, saved, count, (off_t)offset);
        saved_length = read_length > 0 ? (uint64_t)read_length : 0;
    }
    uint64_t fields[4] = {offset, count, size_before, saved_length};
    append_header('W', path);
    append(fields, sizeof fields);
    append(saved, saved_length);
    free(saved);
    remember_pending(path, offset, count);

    if (write_delay_us > 0) {
        usleep(write_delay_us);
    }
}

ssize_t pwrite64(int fd, const void *buffer, size_t count, off_t offset) {
    if (real_pwrite64 == NULL) {
        real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    }
    char path[PATH_MAX];
    if (!journal_ready() || !tracked_path(fd, path)) {
        return real_pwrite64(fd, buffer, count, offset);
    }
    pthread_mutex_lock(&journal_lock);
    journal_write(fd, path, (uint64_t)offset, (uint64_t)count);
    ssize_t result = real_pwrite64(fd, buffer, count, offset);
    pthread_mutex_unlock(&journal_lock);
    return result;
}

ssize_t write(int fd, const void *buffer, size_t count) {
    if (real_write == NULL) {
        real_write = dlsym(RTLD_NEXT, "write");
    }
    char path[PATH_MAX];
    if (!journal_ready() || !tracked_path(fd, path)) {
        return real_write(fd, buffer, count);
    }
    pthread_mutex_lock(&journal_lock);
    struct stat status;
    off_t position = lseek(fd, 0, SEEK_CUR);
    if ((fcntl(fd, F_GETFL) & O_APPEND) != 0 && fstat(fd, &status) == 0) {
        position = status.st_size;
    }
    if (position >= 0) {
        journal_write(fd, path, (uint64_t)position, (uint64_t)count);
    }
    ssize_t result = real_write(fd, buffer, count);
    pthread_mutex_unlock(&journal_lock);
    return result;
}

ssize_t pwrite(int fd, const void *buffer, size_t count, off_t offset) {
    return pwrite64(fd, buffer, count, offset);
}

static void journal_sync(int fd, uint64_t offset, uint64_t length) {
    char path[PATH_MAX];
    if (!journal_ready() || !tracked_path(fd, path)) {
        return;
    }
    pthread_mutex_lock(&journal_lock);
    if (length == 0 && offset == 0) {
        append_header('F', path);
    } else {
        uint64_t fields[2] = {offset, length};
        append_header('S', path);
        append(fields, sizeof fields);
    }
    mark_synced(path, offset, length);
    pthread_mutex_unlock(&journal_lock);
}

int fsync(int fd) {
    if (real_fsync == NULL) {
        real_fsync = dlsym(RTLD_NEXT, "fsync");
    }
    int result = real_fsync(fd);
    if (result == 0) {
        journal_sync(fd, 0, 0);
    }
    return result;
}

int fdatasync(int fd) {
    if (real_fdatasync == NULL) {
        real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    }
    int result = real_fdatasync(fd);
    if (result == 0) {
        journal_sync(fd, 0, 0);
    }
    return result;
}

int sync_file_range(int fd, off_t offset, off_t length, unsigned int flags) {
    if (real_sync_file_range == NULL) {
        real_sync_file_range = dlsym(RTLD_NEXT, "sync_file_range");
    }
    int result = real_sync_file_range(fd, offset, length, flags);
    unsigned int durable = SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
    if (result == 0 && (flags & durable) == durable) {
        /* A range starting at 0 with length 0 is the whole file, as 'F'. */
        journal_sync(fd, (uint64_t)offset, (uint64_t)length);
    }
    return result;
}
