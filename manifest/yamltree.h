/* Internal to manifest/: a YAML document as a tree of nodes that remember
 * their line and column, built from libyaml's event stream.
 *
 * Aliases are resolved by sharing: an alias is a shallow copy of the anchored
 * node that shares its value or children (so the tree is a DAG) but has the
 * alias's own position.  Anchors become visible when their node is
 * complete, so a recursive alias is reported as unknown.  The total size of
 * the tree with every alias expanded is bounded (YT_MAX_WEIGHT), so a walk
 * over it is bounded too ("billion laughs" documents are rejected). */
#ifndef IMGSTORE_MANIFEST_YAMLTREE_H
#define IMGSTORE_MANIFEST_YAMLTREE_H

#include <stddef.h>

#define YT_MAX_WEIGHT  100000 /* nodes, counting every alias expanded */
#define YT_MAX_ANCHORS 1000

enum yt_type { YT_SCALAR, YT_MAP, YT_SEQ };

struct yt_node {
	enum yt_type type;
	int line, col; /* 1-based; column in characters */
	/* Scalars: the value, NUL-terminated (len excludes the terminator). */
	char *str;
	size_t len;
	int is_null; /* plain and untagged "", "~", "null", "Null", "NULL" */
	/* Sequences: the items.  Mappings: key, value, key, value, ... */
	struct yt_node **kids;
	size_t nkids;
	size_t cap;
	size_t weight; /* size with every alias expanded (internal) */
	int shared;    /* an alias: str and kids belong to another node */
};

struct yt_doc {
	struct yt_node *root; /* NULL for an empty document */
	struct yt_node **all; /* every node, to free them (aliases share nodes) */
	size_t nall, capall;
};

/* Why a document was refused: a syntax or structure problem at line:col, or
 * out of memory (oom set, msg empty). */
struct yt_error {
	int line, col;
	int oom;
	char msg[512];
};

/* 0, or -1 with *err filled; the document is freed on failure. */
int yt_parse(const char *data, size_t len, struct yt_doc *doc, struct yt_error *err);
void yt_free(struct yt_doc *doc);

/* Number of key/value pairs of a mapping. */
static inline size_t yt_pairs(const struct yt_node *map)
{
	return map->nkids / 2;
}

#endif
