/* libyaml event stream -> struct yt_node tree (see yamltree.h). */
#include "manifest/yamltree.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

struct anchor {
	char *name;
	struct yt_node *node;
};

struct open_node {
	struct yt_node *node;
	char *anchor; /* registered when the node is complete */
};

struct builder {
	struct yt_doc *doc;
	struct yt_error *err;
	struct open_node *stack;
	size_t depth, capstack;
	struct anchor *anchors;
	size_t nanchors, capanchors;
	size_t weight; /* nodes so far, counting aliases expanded */
	int ndocs;
};

static int grow(void **v, size_t *cap, size_t need, size_t elem)
{
	size_t n = *cap ? *cap : 8;
	void *p;
	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	p = realloc(*v, n * elem);
	if (!p)
		return -1;
	*v = p;
	*cap = n;
	return 0;
}

static int fail(struct builder *b, const yaml_mark_t *m, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static int fail(struct builder *b, const yaml_mark_t *m, const char *fmt, ...)
{
	va_list ap;
	b->err->line = (int)m->line + 1;
	b->err->col = (int)m->column + 1;
	va_start(ap, fmt);
	vsnprintf(b->err->msg, sizeof(b->err->msg), fmt, ap);
	va_end(ap);
	return -1;
}

static int oom(struct builder *b)
{
	b->err->oom = 1;
	b->err->msg[0] = '\0';
	return -1;
}

/* Account for `w` more nodes in the expanded document. */
static int add_weight(struct builder *b, size_t w, const yaml_mark_t *m)
{
	if (w > YT_MAX_WEIGHT || b->weight + w > YT_MAX_WEIGHT)
		return fail(b, m,
		            "the manifest has more than %d YAML nodes (counting every alias "
		            "expanded); split it or use fewer aliases",
		            YT_MAX_WEIGHT);
	b->weight += w;
	return 0;
}

static struct yt_node *new_node(struct builder *b, enum yt_type type, const yaml_mark_t *m)
{
	struct yt_doc *d = b->doc;
	struct yt_node *n;
	if (grow((void **)&d->all, &d->capall, d->nall + 1, sizeof(*d->all)))
		return NULL;
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->type = type;
	n->line = (int)m->line + 1;
	n->col = (int)m->column + 1;
	n->weight = 1;
	d->all[d->nall++] = n;
	return n;
}

static int attach(struct builder *b, struct yt_node *n)
{
	struct yt_node *parent;
	if (!b->depth) {
		b->doc->root = n;
		return 0;
	}
	parent = b->stack[b->depth - 1].node;
	if (grow((void **)&parent->kids, &parent->cap, parent->nkids + 1, sizeof(*parent->kids)))
		return oom(b);
	parent->kids[parent->nkids++] = n;
	return 0;
}

static int add_anchor(struct builder *b, char *name, struct yt_node *n, const yaml_mark_t *m)
{
	if (b->nanchors >= YT_MAX_ANCHORS) {
		free(name);
		return fail(b, m, "the manifest defines more than %d anchors; use fewer anchors",
		            YT_MAX_ANCHORS);
	}
	if (grow((void **)&b->anchors, &b->capanchors, b->nanchors + 1, sizeof(*b->anchors))) {
		free(name);
		return oom(b);
	}
	b->anchors[b->nanchors].name = name;
	b->anchors[b->nanchors].node = n;
	b->nanchors++;
	return 0;
}

static char *dup_anchor(struct builder *b, const yaml_char_t *a)
{
	char *s;
	if (!a)
		return NULL;
	s = strdup((const char *)a);
	if (!s)
		oom(b);
	return s;
}

static int is_null_scalar(const yaml_event_t *ev)
{
	const char *v = (const char *)ev->data.scalar.value;
	static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
	if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || !ev->data.scalar.plain_implicit)
		return 0;
	if (ev->data.scalar.tag)
		return 0;
	for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
		if (!strcmp(v, nulls[i]))
			return 1;
	return 0;
}

static int on_scalar(struct builder *b, const yaml_event_t *ev)
{
	struct yt_node *n;
	char *anchor;
	if (add_weight(b, 1, &ev->start_mark))
		return -1;
	n = new_node(b, YT_SCALAR, &ev->start_mark);
	if (!n)
		return oom(b);
	n->len = ev->data.scalar.length;
	n->str = malloc(n->len + 1);
	if (!n->str)
		return oom(b);
	memcpy(n->str, ev->data.scalar.value, n->len);
	n->str[n->len] = '\0';
	n->is_null = is_null_scalar(ev);
	if (attach(b, n))
		return -1;
	if (ev->data.scalar.anchor) {
		anchor = dup_anchor(b, ev->data.scalar.anchor);
		if (!anchor || add_anchor(b, anchor, n, &ev->start_mark))
			return -1;
	}
	return 0;
}

static int on_start(struct builder *b, const yaml_event_t *ev, enum yt_type type)
{
	const yaml_char_t *a =
	        type == YT_MAP ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
	struct yt_node *n;
	char *anchor = NULL;
	if (add_weight(b, 1, &ev->start_mark))
		return -1;
	n = new_node(b, type, &ev->start_mark);
	if (!n)
		return oom(b);
	if (attach(b, n))
		return -1;
	if (a && !(anchor = dup_anchor(b, a)))
		return -1;
	if (grow((void **)&b->stack, &b->capstack, b->depth + 1, sizeof(*b->stack))) {
		free(anchor);
		return oom(b);
	}
	b->stack[b->depth].node = n;
	b->stack[b->depth].anchor = anchor;
	b->depth++;
	return 0;
}

static int on_end(struct builder *b, const yaml_event_t *ev)
{
	struct open_node top;
	size_t w = 1;
	if (!b->depth)
		return fail(b, &ev->start_mark, "unbalanced YAML events");
	top = b->stack[--b->depth];
	/* Each kid weighs at most YT_MAX_WEIGHT (add_weight), so no overflow. */
	for (size_t i = 0; i < top.node->nkids && w <= YT_MAX_WEIGHT; i++)
		w += top.node->kids[i]->weight;
	top.node->weight = w;
	if (top.anchor)
		return add_anchor(b, top.anchor, top.node, &ev->start_mark);
	return 0;
}

static int on_alias(struct builder *b, const yaml_event_t *ev)
{
	const char *name = (const char *)ev->data.alias.anchor;
	struct yt_node *target = NULL, *copy;
	for (size_t i = b->nanchors; i-- > 0;) {
		if (!strcmp(b->anchors[i].name, name)) {
			target = b->anchors[i].node;
			break;
		}
	}
	if (!target)
		return fail(b, &ev->start_mark,
		            "alias \"*%.64s\" refers to no complete anchor before it; define "
		            "\"&%.64s\" earlier (an alias cannot refer to a node that contains it)",
		            name, name);
	if (add_weight(b, target->weight, &ev->start_mark))
		return -1;
	copy = new_node(b, target->type, &ev->start_mark);
	if (!copy)
		return oom(b);
	copy->str = target->str;
	copy->len = target->len;
	copy->is_null = target->is_null;
	copy->kids = target->kids; /* complete: never grows again */
	copy->nkids = target->nkids;
	copy->weight = target->weight;
	copy->shared = 1;
	return attach(b, copy);
}

static void syntax_error(struct builder *b, const yaml_parser_t *p, const char *data, size_t len)
{
	if (p->error == YAML_MEMORY_ERROR) {
		oom(b);
		return;
	}
	if (p->error == YAML_READER_ERROR) {
		/* The reader reports a byte offset, not a mark: count lines up to it. */
		yaml_mark_t m = {0, 0, 0};
		size_t off = p->problem_offset < len ? p->problem_offset : len;
		for (size_t i = 0; i < off; i++) {
			if (data[i] == '\n') {
				m.line++;
				m.column = 0;
			} else if (((unsigned char)data[i] & 0xc0) != 0x80) {
				m.column++;
			}
		}
		if (p->problem_value != -1)
			fail(b, &m,
			     "invalid YAML: %s (byte 0x%02x at offset %zu); save the manifest as "
			     "UTF-8 text",
			     p->problem ? p->problem : "unreadable input",
			     (unsigned)p->problem_value, p->problem_offset);
		else
			fail(b, &m, "invalid YAML: %s; save the manifest as UTF-8 text",
			     p->problem ? p->problem : "unreadable input");
		return;
	}
	if (p->context)
		fail(b, &p->problem_mark,
		     "invalid YAML: %s %s (line %zu, column %zu); check the indentation and "
		     "quoting",
		     p->problem ? p->problem : "syntax error", p->context, p->context_mark.line + 1,
		     p->context_mark.column + 1);
	else
		fail(b, &p->problem_mark, "invalid YAML: %s; check the indentation and quoting",
		     p->problem ? p->problem : "syntax error");
}

void yt_free(struct yt_doc *doc)
{
	if (!doc)
		return;
	for (size_t i = 0; i < doc->nall; i++) {
		if (!doc->all[i]->shared) {
			free(doc->all[i]->str);
			free(doc->all[i]->kids);
		}
		free(doc->all[i]);
	}
	free(doc->all);
	memset(doc, 0, sizeof(*doc));
}

int yt_parse(const char *data, size_t len, struct yt_doc *doc, struct yt_error *err)
{
	struct builder b;
	yaml_parser_t parser;
	yaml_event_t ev;
	int rc = -1, done = 0;

	memset(doc, 0, sizeof(*doc));
	memset(err, 0, sizeof(*err));
	memset(&b, 0, sizeof(b));
	b.doc = doc;
	b.err = err;
	if (!yaml_parser_initialize(&parser))
		return oom(&b);
	yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);
	while (!done) {
		int r = 0;
		if (!yaml_parser_parse(&parser, &ev)) {
			syntax_error(&b, &parser, data, len);
			goto out;
		}
		switch (ev.type) {
		case YAML_DOCUMENT_START_EVENT:
			if (++b.ndocs > 1)
				r = fail(&b, &ev.start_mark,
				         "the manifest holds more than one YAML document (a second "
				         "\"---\"); keep a single document");
			break;
		case YAML_SCALAR_EVENT: r = on_scalar(&b, &ev); break;
		case YAML_SEQUENCE_START_EVENT: r = on_start(&b, &ev, YT_SEQ); break;
		case YAML_MAPPING_START_EVENT: r = on_start(&b, &ev, YT_MAP); break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT: r = on_end(&b, &ev); break;
		case YAML_ALIAS_EVENT: r = on_alias(&b, &ev); break;
		case YAML_STREAM_END_EVENT: done = 1; break;
		default: break;
		}
		yaml_event_delete(&ev);
		if (r)
			goto out;
	}
	rc = 0;
out:
	yaml_parser_delete(&parser);
	for (size_t i = 0; i < b.depth; i++)
		free(b.stack[i].anchor);
	free(b.stack);
	for (size_t i = 0; i < b.nanchors; i++)
		free(b.anchors[i].name);
	free(b.anchors);
	if (rc)
		yt_free(doc);
	return rc;
}
