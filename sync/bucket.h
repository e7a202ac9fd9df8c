/* What the bucket holds: image objects and whether each has a valid
 * checksum record (shared by list, sync and prune). */
#ifndef IMGSTORE_SYNC_BUCKET_H
#define IMGSTORE_SYNC_BUCKET_H

#include "common/err.h"
#include "store/record.h"
#include "store/s3.h"

#include <stdint.h>

struct bucket_image {
	char *destination;
	int exists; /* images/<destination> is there */
	uint64_t size;
	char etag[S3_ETAG_MAX];
	int has_record; /* metadata/<destination>.json parsed (rec is filled) */
	int complete;   /* ... and describes this object */
	struct record rec;
	char problem[512]; /* why not complete */
};

/* Every image object under images/ with its record state, sorted by key. */
int bucket_scan(struct s3 *s3, struct bucket_image **out, size_t *n, struct err *e);
/* One destination: HEAD the object, read and check its record.  A missing
 * object or record is not an error (exists / has_record say so). */
int bucket_check(struct s3 *s3, const char *destination, struct bucket_image *out, struct err *e);
void bucket_image_clear(struct bucket_image *im);
void bucket_images_free(struct bucket_image *v, size_t n);

#endif
