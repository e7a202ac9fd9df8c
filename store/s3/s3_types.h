/* The plain values the S3 client and its XML parsers exchange: objects of a
 * listing, parts and uploads of a multipart upload.  Its own header so that
 * s3_xml.c (which fills them) and s3.c (which sends the requests) need not
 * include each other. */
#ifndef IMGSTORE_STORE_S3_TYPES_H
#define IMGSTORE_STORE_S3_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define S3_ETAG_MAX 128

struct s3_object {
	char *key;
	uint64_t size;
	char etag[S3_ETAG_MAX]; /* with its quotes, as the server sends it */
	time_t mtime;
};

/* A part of a multipart upload. */
struct s3_part {
	int number; /* 1-based */
	char etag[S3_ETAG_MAX];
};

struct s3_upload {
	char *key;
	char *upload_id;
	time_t initiated;
};

/* Each frees the array and what its elements own; NULL is fine. */
void s3_objects_free(struct s3_object *o, size_t n);
void s3_uploads_free(struct s3_upload *u, size_t n);
void s3_strings_free(char **v, size_t n);

#endif
