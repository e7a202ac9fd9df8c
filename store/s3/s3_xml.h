/* S3 XML bodies (internal to store/): parsing responses with libxml2, and
 * building the two request bodies (DeleteObjects, CompleteMultipartUpload).
 *
 * Element names are matched by local name, ignoring the namespace (AWS sends
 * xmlns="http://s3.amazonaws.com/doc/2006-03-01/", some servers none).
 * Parsing never loads external entities nor touches the network, and
 * libxml2's own error printing is off: problems come back in `e`. */
#ifndef IMGSTORE_STORE_S3_XML_H
#define IMGSTORE_STORE_S3_XML_H

#include "common/buf.h"
#include "common/err.h"
#include "store/s3/s3_types.h"

#include <stddef.h>

/* <Error><Code/><Message/></Error>.  Returns 0 when xml is such a document
 * (code/msg filled, possibly empty), -1 otherwise.  Control characters in
 * the message are replaced, so it can go into an error text as is. */
int s3_xml_error(const char *xml, size_t n, char *code, size_t code_cap, char *msg, size_t msg_cap);

/* The text of <Error>'s child `name` (Region, Endpoint, ...): 0 when
 * present, -1 otherwise (out is then ""). */
int s3_xml_error_field(const char *xml, size_t n, const char *name, char *out, size_t cap);

/* ListObjectsV2 pages accumulate here (a common prefix that repeats the
 * last one is dropped: see s3_list's StartAfter). */
struct s3_xml_list {
	struct s3_object *objs;
	size_t nobjs, cap_objs;
	char **prefixes;
	size_t nprefixes, cap_prefixes;
	int truncated;    /* of the last page parsed */
	char *next_token; /* NextContinuationToken of the last page, or NULL */
};
int s3_xml_parse_list(const char *xml, size_t n, struct s3_xml_list *acc, struct err *e);
void s3_xml_list_free(struct s3_xml_list *acc);

/* ListMultipartUploads pages accumulate here. */
struct s3_xml_uploads {
	struct s3_upload *v;
	size_t n, cap;
	int truncated;
	char *next_key_marker, *next_upload_id_marker;
};
int s3_xml_parse_uploads(const char *xml, size_t n, struct s3_xml_uploads *acc, struct err *e);
void s3_xml_uploads_free(struct s3_xml_uploads *acc);

/* InitiateMultipartUploadResult -> malloc'd UploadId. */
int s3_xml_parse_initiate(const char *xml, size_t n, char **upload_id, struct err *e);

/* CompleteMultipartUploadResult -> ETag (may be empty: some servers send
 * none).  A 200 response can carry an <Error> instead: then -1 with
 * *is_error = 1 and code/msg filled. */
int s3_xml_parse_complete(const char *xml, size_t n, char etag[S3_ETAG_MAX], int *is_error,
                          char *code, size_t code_cap, char *msg, size_t msg_cap, struct err *e);

/* DeleteResult: how many <Error> entries, and the first one. */
struct s3_xml_delete_result {
	size_t nerrors;
	char key[512], code[64], msg[256];
};
int s3_xml_parse_delete(const char *xml, size_t n, struct s3_xml_delete_result *out, struct err *e);

/* Append s with & < > " ' escaped. */
int s3_xml_escape(struct buf *out, const char *s);
/* <Delete><Quiet>true</Quiet><Object><Key>k</Key></Object>...</Delete> */
int s3_xml_build_delete(struct buf *out, char *const *keys, size_t n);
/* <CompleteMultipartUpload><Part><PartNumber/><ETag/></Part>...</...> */
int s3_xml_build_complete(struct buf *out, const struct s3_part *parts, size_t n);

/* CopyObjectResult / CopyPartResult (root names the element): like
 * s3_xml_parse_complete, a copy can fail after its 200 (an <Error> body);
 * the ETag may be absent (some servers leave it out). */
int s3_xml_parse_copy(const char *xml, size_t n, const char *root, char etag[S3_ETAG_MAX],
                      int *is_error, char *code, size_t code_cap, char *msg, size_t msg_cap,
                      struct err *e);

#endif
