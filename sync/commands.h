/* The labctl commands: each takes argv starting at its own name and returns
 * the process exit status (0 success, 1 the work failed, 2 usage/invalid). */
#ifndef IMGSTORE_SYNC_COMMANDS_H
#define IMGSTORE_SYNC_COMMANDS_H

int cmd_validate(int argc, char **argv);
int cmd_sync(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_upload(int argc, char **argv);
int cmd_overlay(int argc, char **argv);
int cmd_index(int argc, char **argv);

#endif
