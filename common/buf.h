/* A growable byte buffer, always NUL-terminated so text can be read in place. */
#ifndef IMGSTORE_COMMON_BUF_H
#define IMGSTORE_COMMON_BUF_H

#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

#define BUF_INIT                                                                                   \
	{                                                                                          \
		NULL, 0, 0                                                                         \
	}

int buf_reserve(struct buf *b, size_t extra);              /* 0 or -1 (ENOMEM) */
int buf_append(struct buf *b, const void *data, size_t n); /* 0 or -1 */
int buf_appendf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_appends(struct buf *b, const char *s);
void buf_reset(struct buf *b);
/* Free, after overwriting the bytes (for buffers that held secrets). */
void buf_free_secure(struct buf *b);
void buf_free(struct buf *b);
/* Hand the bytes over to the caller (free() them); the buffer is left empty. */
char *buf_steal(struct buf *b);

#endif
