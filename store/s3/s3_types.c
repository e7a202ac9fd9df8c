#include "store/s3/s3_types.h"

#include <stdlib.h>

void s3_uploads_free(struct s3_upload *u, size_t n)
{
	size_t i;
	if (!u)
		return;
	for (i = 0; i < n; i++) {
		free(u[i].key);
		free(u[i].upload_id);
	}
	free(u);
}

void s3_objects_free(struct s3_object *o, size_t n)
{
	size_t i;
	if (!o)
		return;
	for (i = 0; i < n; i++)
		free(o[i].key);
	free(o);
}

void s3_strings_free(char **v, size_t n)
{
	size_t i;
	if (!v)
		return;
	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}
