/* S3 XML bodies on libxml2 (see s3_xml.h). */
#include "store/s3/s3_xml.h"

#include "common/timefmt.h"

#include <errno.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static xmlDocPtr parse(const char *xml, size_t n)
{
	/* skip leading whitespace (servers may send some as a keep-alive) */
	while (n && (*xml == ' ' || *xml == '\n' || *xml == '\r' || *xml == '\t')) {
		xml++;
		n--;
	}
	if (!n || n > INT_MAX)
		return NULL;
	return xmlReadMemory(xml, (int)n, "s3.xml", NULL,
	                     XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
}

static int is_elem(xmlNodePtr n, const char *name)
{
	return n && n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, name);
}

static xmlNodePtr child(xmlNodePtr parent, const char *name)
{
	xmlNodePtr c;
	if (!parent)
		return NULL;
	for (c = parent->children; c; c = c->next)
		if (is_elem(c, name))
			return c;
	return NULL;
}

/* malloc'd text of the named child, NULL when absent (or ENOMEM) */
static char *child_text(xmlNodePtr parent, const char *name)
{
	xmlNodePtr c = child(parent, name);
	xmlChar *t;
	char *s;
	if (!c)
		return NULL;
	t = xmlNodeGetContent(c);
	s = strdup(t ? (const char *)t : "");
	xmlFree(t);
	return s;
}

/* Copy the text of the named child into out (truncated, NUL-terminated);
 * control characters become spaces.  0 when present, -1 when absent. */
static int child_copy(xmlNodePtr parent, const char *name, char *out, size_t cap)
{
	xmlNodePtr c = child(parent, name);
	xmlChar *t;
	size_t i;
	if (cap)
		out[0] = '\0';
	if (!c || !cap)
		return -1;
	t = xmlNodeGetContent(c);
	if (t) {
		for (i = 0; t[i] && i + 1 < cap; i++)
			out[i] = t[i] < 0x20 || t[i] == 0x7f ? ' ' : (char)t[i];
		out[i] = '\0';
		xmlFree(t);
	}
	return 0;
}

static int child_bool(xmlNodePtr parent, const char *name)
{
	char v[8];
	return !child_copy(parent, name, v, sizeof(v)) && !strcmp(v, "true");
}

static int bad_xml(struct err *e, const char *what)
{
	return err_set(e, ERR_SERVER,
	               "the server sent a malformed %s response (not the XML expected)", what);
}

static xmlNodePtr root_named(xmlDocPtr doc, const char *name)
{
	xmlNodePtr r = doc ? xmlDocGetRootElement(doc) : NULL;
	return is_elem(r, name) ? r : NULL;
}

int s3_xml_error(const char *xml, size_t n, char *code, size_t code_cap, char *msg, size_t msg_cap)
{
	xmlDocPtr doc = parse(xml, n);
	xmlNodePtr r = root_named(doc, "Error");
	int rc = -1;
	if (code_cap)
		code[0] = '\0';
	if (msg_cap)
		msg[0] = '\0';
	if (r) {
		child_copy(r, "Code", code, code_cap);
		child_copy(r, "Message", msg, msg_cap);
		rc = 0;
	}
	xmlFreeDoc(doc);
	return rc;
}

int s3_xml_error_field(const char *xml, size_t n, const char *name, char *out, size_t cap)
{
	xmlDocPtr doc = parse(xml, n);
	int rc = child_copy(root_named(doc, "Error"), name, out, cap);
	xmlFreeDoc(doc);
	return rc;
}

/* a <Key>/<ETag>/... element: ETag and Size are optional for robustness */
static int parse_object(xmlNodePtr c, struct s3_object *o)
{
	char num[32], date[64];
	memset(o, 0, sizeof(*o));
	o->key = child_text(c, "Key");
	if (!o->key)
		return -1;
	child_copy(c, "ETag", o->etag, sizeof(o->etag));
	if (!child_copy(c, "Size", num, sizeof(num))) {
		/* strtoull alone takes "-1" as 2^64-1 and a 33-digit value cut to
		 * 31 by the copy as a number: only plain digits that fit count. */
		char *end;
		if (num[0] < '0' || num[0] > '9' || strlen(num) >= sizeof(num) - 1)
			return -1;
		errno = 0;
		o->size = strtoull(num, &end, 10);
		if (*end || errno == ERANGE || o->size > INT64_MAX)
			return -1;
	}
	if (!child_copy(c, "LastModified", date, sizeof(date)))
		(void)time_parse_rfc3339(date, &o->mtime);
	return 0;
}

static int grow(void **v, size_t *cap, size_t need, size_t size)
{
	size_t nc;
	void *p;
	if (need <= *cap)
		return 0;
	nc = *cap ? *cap * 2 : 64;
	while (nc < need)
		nc *= 2;
	p = realloc(*v, nc * size);
	if (!p)
		return -1;
	*v = p;
	*cap = nc;
	return 0;
}

int s3_xml_parse_list(const char *xml, size_t n, struct s3_xml_list *acc, struct err *e)
{
	xmlDocPtr doc = parse(xml, n);
	xmlNodePtr r = root_named(doc, "ListBucketResult"), c;
	int rc = -1;
	free(acc->next_token);
	acc->next_token = NULL;
	acc->truncated = 0;
	if (!r) {
		bad_xml(e, "ListObjectsV2");
		goto out;
	}
	for (c = r->children; c; c = c->next) {
		if (is_elem(c, "Contents")) {
			struct s3_object o;
			if (grow((void **)&acc->objs, &acc->cap_objs, acc->nobjs + 1,
			         sizeof(*acc->objs)))
				goto oom;
			if (parse_object(c, &o)) {
				free(o.key);
				bad_xml(e, "ListObjectsV2 (an entry without a Key or a bad Size)");
				goto out;
			}
			acc->objs[acc->nobjs++] = o;
		} else if (is_elem(c, "CommonPrefixes")) {
			char *p = child_text(c, "Prefix");
			if (!p)
				continue;
			/* a page that goes on after a common prefix (StartAfter) may
			 * roll the keys under it up into it again */
			if (acc->nprefixes && !strcmp(acc->prefixes[acc->nprefixes - 1], p)) {
				free(p);
				continue;
			}
			if (grow((void **)&acc->prefixes, &acc->cap_prefixes, acc->nprefixes + 1,
			         sizeof(*acc->prefixes))) {
				free(p);
				goto oom;
			}
			acc->prefixes[acc->nprefixes++] = p;
		}
	}
	acc->truncated = child_bool(r, "IsTruncated");
	acc->next_token = child_text(r, "NextContinuationToken");
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	xmlFreeDoc(doc);
	return rc;
}

void s3_xml_list_free(struct s3_xml_list *acc)
{
	s3_objects_free(acc->objs, acc->nobjs);
	s3_strings_free(acc->prefixes, acc->nprefixes);
	free(acc->next_token);
	memset(acc, 0, sizeof(*acc));
}

int s3_xml_parse_uploads(const char *xml, size_t n, struct s3_xml_uploads *acc, struct err *e)
{
	xmlDocPtr doc = parse(xml, n);
	xmlNodePtr r = root_named(doc, "ListMultipartUploadsResult"), c;
	int rc = -1;
	free(acc->next_key_marker);
	free(acc->next_upload_id_marker);
	acc->next_key_marker = acc->next_upload_id_marker = NULL;
	acc->truncated = 0;
	if (!r) {
		bad_xml(e, "ListMultipartUploads");
		goto out;
	}
	for (c = r->children; c; c = c->next) {
		struct s3_upload u = {0};
		char date[64];
		if (!is_elem(c, "Upload"))
			continue;
		if (grow((void **)&acc->v, &acc->cap, acc->n + 1, sizeof(*acc->v)))
			goto oom;
		u.key = child_text(c, "Key");
		u.upload_id = child_text(c, "UploadId");
		if (!u.key || !u.upload_id) {
			free(u.key);
			free(u.upload_id);
			bad_xml(e, "ListMultipartUploads (an Upload without Key or UploadId)");
			goto out;
		}
		if (!child_copy(c, "Initiated", date, sizeof(date)))
			(void)time_parse_rfc3339(date, &u.initiated);
		acc->v[acc->n++] = u;
	}
	acc->truncated = child_bool(r, "IsTruncated");
	acc->next_key_marker = child_text(r, "NextKeyMarker");
	acc->next_upload_id_marker = child_text(r, "NextUploadIdMarker");
	rc = 0;
	goto out;
oom:
	err_set(e, ERR_IO, "out of memory");
out:
	xmlFreeDoc(doc);
	return rc;
}

void s3_xml_uploads_free(struct s3_xml_uploads *acc)
{
	s3_uploads_free(acc->v, acc->n);
	free(acc->next_key_marker);
	free(acc->next_upload_id_marker);
	memset(acc, 0, sizeof(*acc));
}

int s3_xml_parse_initiate(const char *xml, size_t n, char **upload_id, struct err *e)
{
	xmlDocPtr doc = parse(xml, n);
	xmlNodePtr r = root_named(doc, "InitiateMultipartUploadResult");
	int rc = -1;
	*upload_id = r ? child_text(r, "UploadId") : NULL;
	if (!*upload_id || !**upload_id) {
		free(*upload_id);
		*upload_id = NULL;
		bad_xml(e, "CreateMultipartUpload");
		goto out;
	}
	rc = 0;
out:
	xmlFreeDoc(doc);
	return rc;
}

int s3_xml_parse_complete(const char *xml, size_t n, char etag[S3_ETAG_MAX], int *is_error,
                          char *code, size_t code_cap, char *msg, size_t msg_cap, struct err *e)
{
	xmlDocPtr doc = parse(xml, n);
	xmlNodePtr r = root_named(doc, "CompleteMultipartUploadResult");
	int rc = -1;
	*is_error = 0;
	etag[0] = '\0';
	if (r) {
		child_copy(r, "ETag", etag, S3_ETAG_MAX);
		rc = 0;
	} else if ((r = root_named(doc, "Error"))) {
		*is_error = 1;
		child_copy(r, "Code", code, code_cap);
		child_copy(r, "Message", msg, msg_cap);
	} else {
		bad_xml(e, "CompleteMultipartUpload");
	}
	xmlFreeDoc(doc);
	return rc;
}

int s3_xml_parse_delete(const char *xml, size_t n, struct s3_xml_delete_result *out, struct err *e)
{
	xmlDocPtr doc = parse(xml, n);
	xmlNodePtr r = root_named(doc, "DeleteResult"), c;
	int rc = -1;
	memset(out, 0, sizeof(*out));
	if (!r) {
		bad_xml(e, "DeleteObjects");
		goto out;
	}
	for (c = r->children; c; c = c->next) {
		if (!is_elem(c, "Error"))
			continue;
		if (!out->nerrors++) {
			child_copy(c, "Key", out->key, sizeof(out->key));
			child_copy(c, "Code", out->code, sizeof(out->code));
			child_copy(c, "Message", out->msg, sizeof(out->msg));
		}
	}
	rc = 0;
out:
	xmlFreeDoc(doc);
	return rc;
}

int s3_xml_escape(struct buf *out, const char *s)
{
	const char *run = s;
	for (; *s; s++) {
		const char *rep = *s == '&'    ? "&amp;"
		                  : *s == '<'  ? "&lt;"
		                  : *s == '>'  ? "&gt;"
		                  : *s == '"'  ? "&quot;"
		                  : *s == '\'' ? "&apos;"
		                  : *s == '\r' ? "&#13;"
		                               : NULL;
		if (!rep)
			continue;
		if (buf_append(out, run, (size_t)(s - run)) || buf_appends(out, rep))
			return -1;
		run = s + 1;
	}
	return buf_append(out, run, (size_t)(s - run));
}

int s3_xml_build_delete(struct buf *out, char *const *keys, size_t n)
{
	size_t i;
	if (buf_appends(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                     "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
	                     "<Quiet>true</Quiet>"))
		return -1;
	for (i = 0; i < n; i++)
		if (buf_appends(out, "<Object><Key>") || s3_xml_escape(out, keys[i]) ||
		    buf_appends(out, "</Key></Object>"))
			return -1;
	return buf_appends(out, "</Delete>");
}

int s3_xml_build_complete(struct buf *out, const struct s3_part *parts, size_t n)
{
	size_t i;
	if (buf_appends(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	                     "<CompleteMultipartUpload "
	                     "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"))
		return -1;
	for (i = 0; i < n; i++)
		if (buf_appendf(out, "<Part><PartNumber>%d</PartNumber><ETag>", parts[i].number) ||
		    s3_xml_escape(out, parts[i].etag) || buf_appends(out, "</ETag></Part>"))
			return -1;
	return buf_appends(out, "</CompleteMultipartUpload>");
}

int s3_xml_parse_copy(const char *xml, size_t n, const char *root, char etag[S3_ETAG_MAX],
                      int *is_error, char *code, size_t code_cap, char *msg, size_t msg_cap,
                      struct err *e)
{
	xmlDocPtr doc = parse(xml, n);
	xmlNodePtr r = root_named(doc, root);
	int rc = -1;
	*is_error = 0;
	etag[0] = '\0';
	if (r) {
		child_copy(r, "ETag", etag, S3_ETAG_MAX);
		rc = 0;
	} else if ((r = root_named(doc, "Error"))) {
		*is_error = 1;
		child_copy(r, "Code", code, code_cap);
		child_copy(r, "Message", msg, msg_cap);
	} else {
		bad_xml(e, root);
	}
	xmlFreeDoc(doc);
	return rc;
}
