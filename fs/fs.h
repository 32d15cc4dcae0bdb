/* The mount's one context: what was mounted, its tree, and the options. */
#ifndef FS_FS_H
#define FS_FS_H

#include <stdbool.h>
#include <sys/types.h>

struct fuse_conn_info_opts;
struct fuse_session;

#include "source.h"
#include "tree.h"
#include "viewnodes.h"
#include "control.h"
#include "bufpool.h"
#include "mountpoint.h"

struct loop;

/* The largest read the kernel sends: libfuse 3.14 caps requests at this many pages. */
#define REPLY_MAX_PAGES 256

struct fs_options {
	char *source;
	char *layout_name;
	char *variant;          /* -o variant=: *.VARIANT.safetensors, as diffusers picks them */
	char *read_ahead_kb_arg; /* -o read_ahead_kb= as given */
	unsigned read_ahead_kb; /* 0: leave the kernel's default */
	int listviews;          /* readdir lists each tensor's .npy view too */
	char *gpu;              /* -o gpu=: the default upload device */
	char *spin_us_arg;      /* -o spin_us= as given */
	char *max_threads_arg;  /* -o max_threads= as given */
	char *max_upload_arg;   /* -o max_upload= as given: control_init reads it */
	unsigned spin_us;       /* how long the reader polls before it sleeps */
	unsigned max_threads;   /* threads that serve requests */
	char *uid_arg;          /* -o uid=, gid=, umask= as given (sshfs's): what files show */
	char *gid_arg;
	char *umask_arg;
	char *max_read_arg;     /* -o max_read=, max_write=, max_readahead= as given; libfuse */
	char *max_write_arg;    /* gets them too */
	char *max_readahead_arg;
	unsigned max_read;      /* 0: not given */
	unsigned max_readahead; /* bytes; UINT_MAX: not given */
	int has_fsname;         /* the user's -o fsname= and subtype= win over ours */
	int has_subtype;
	int auto_unmount;       /* mounted by fusermount3, which cannot use the fd path */
	int read_only;          /* -o ro (-r): read-only at the VFS level, and no /.control */
	/* Remote sources (http.h, store.h): as given, then parsed into struct fs.remote. */
	char *cacert;
	char *cache_dir;        /* -o cache=DIR */
	char *connect_timeout_arg;
	char *read_timeout_arg;
	char *retries_arg;
	char *block_size_arg;
	char *cache_size_arg;
	/* Quantized checkpoints (dequant.h). */
	char *dequantize;       /* -o dequantize=BF16|F16|F32 */
	char *gptq_format;      /* -o gptq_format=gptq|gptq_v2 */
	char *ct_packing;       /* -o ct_packing=word|stream */
};

struct fs {
	struct fs_options opt;
	struct source_opts source_opts; /* what source_open takes from the options */
	char shown[512];        /* SOURCE for messages and /proc/mounts: a URL without secrets */
	enum layout layout;
	struct source src;
	struct tree tree;
	uid_t uid;              /* the mounting user: /.control's owner, the only one who may open it */
	gid_t gid;
	uid_t file_uid;         /* what every other node shows: -o uid=, gid= or the mounting user */
	gid_t file_gid;
	mode_t umask_bits;      /* -o umask=: bits cleared from every other node's mode */
	const char *mountpoint; /* as given: readahead_set finds the mount by it */
	int mountpoint_fd;      /* the directory checked, and mounted on through its fd path */
	char mountpoint_fd_path[MOUNTPOINT_FD_PATH_MAX];
	int debug;              /* -d: say what could not be tuned */
	struct fuse_conn_info_opts *conn_opts; /* -o splice_write, max_background, ... */
	int splice_write; /* what FUSE_INIT settled: replies spliced from the backing file */
	int no_opendir;   /* the kernel takes ENOSYS to OPENDIR as "never ask again" */
	struct view_table views;
	struct control control;
	int control_ready;
	struct bufpool replies; /* the buffers of replies the daemon fills itself */
	struct loop *loop;      /* the polling request loop while it runs, for loop_step_aside */
	struct fuse_session *se; /* while mounted: long /.control commands stop when it has exited */
	int replies_ready;
	int views_ready;
};

/* The shard that holds node N's bytes (the first one for nodes that are no tensor). */
static inline const struct shard *shard_of(const struct fs *fs, const struct node *n)
{
	return &fs->src.shards[n->kind == NODE_TENSOR ? n->tensor.shard : 0];
}

/* Tensor node N's header entry, and where its bytes begin in its shard's file. */
static inline const struct st_tensor *tensor_of(const struct fs *fs, const struct node *n)
{
	return &shard_of(fs, n)->hdr.tensors[n->tensor.index];
}

static inline uint64_t tensor_file_offset(const struct fs *fs, const struct node *n)
{
	return shard_of(fs, n)->hdr.data_start + tensor_of(fs, n)->begin;
}

/* The lowlevel operations (ops.c). */
extern const struct fuse_lowlevel_ops fs_ops;

#endif
