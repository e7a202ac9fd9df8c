/* What the bucket holds: image objects and whether each has a valid
 * checksum record (shared by list, sync and prune). */
#ifndef IMGSTORE_SYNC_BUCKET_H
#define IMGSTORE_SYNC_BUCKET_H

#include "common/err.h"
#include "store/record.h"
#include "store/record_index.h"
#include "store/s3/s3.h"

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

/* Every image object under images/ with its record state, sorted by key.
 * Records come from the record index when it holds the listed version, the
 * others are fetched in parallel over connections opened from cfg. */
int bucket_scan(const struct s3_config *cfg, struct s3 *s3, struct bucket_image **out, size_t *n,
                struct err *e);
/* One destination: HEAD the object, read and check its record.  A missing
 * object or record is not an error (exists / has_record say so). */
int bucket_check(struct s3 *s3, const char *destination, struct bucket_image *out, struct err *e);
/* Rebuild the record index (store/record_index.h; create: also when the
 * bucket has none) over s3, or over a connection of its own when s3 is NULL;
 * res says what was done. */
int bucket_index_update(const struct s3_config *cfg, struct s3 *s3, int create,
                        struct recindex_result *res, struct err *e);
/* The same after a command changed the bucket (created when missing, unless
 * IMGSTORE_RECORD_INDEX=off): logs the outcome, and a failure is only a
 * warning (the index is a cache, the command succeeded). */
void bucket_index_refresh(const struct s3_config *cfg, struct s3 *s3);
void bucket_image_clear(struct bucket_image *im);
void bucket_images_free(struct bucket_image *v, size_t n);

#endif
