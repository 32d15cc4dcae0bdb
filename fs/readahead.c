#include "readahead.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static void *tune(void *arg)
{
	struct readahead_tuner *r = arg;
	struct stat st;
	char path[64], value[24];
	int fd, len;

	/* The stat blocks until FUSE_INIT is answered, which is when the kernel sets the window. */
	if (stat(r->mountpoint, &st) < 0)
		return NULL;
	snprintf(path, sizeof(path), "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev),
		 minor(st.st_dev));
	len = snprintf(value, sizeof(value), "%u", r->kb);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, value, (size_t)len) != len) {
		if (r->debug)
			fprintf(stderr, "safetensorsfs: cannot set %s to %u: %s (reads use the kernel's window)\n",
				path, r->kb, strerror(errno));
	}
	if (fd >= 0)
		close(fd);
	return NULL;
}

void readahead_start(struct readahead_tuner *r, const char *mountpoint, unsigned kb, int debug)
{
	sigset_t all, old;

	*r = (struct readahead_tuner){.mountpoint = mountpoint, .kb = kb, .debug = debug};
	/* Signals stay with the thread that serves the loop, whose libfuse handler ends it. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (kb > 0 && pthread_create(&r->thread, NULL, tune, r) == 0)
		r->started = 1;
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void readahead_join(struct readahead_tuner *r)
{
	if (r->started)
		pthread_join(r->thread, NULL);
	r->started = 0;
}
