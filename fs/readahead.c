#include "readahead.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* mountinfo writes space, tab, newline and backslash in a path as \ooo. */
static void unescape(char *s)
{
	char *out = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
		    s[3] <= '7') {
			*out++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 3;
		} else {
			*out++ = *s;
		}
	}
	*out = '\0';
}

/* A FUSE mount's type: "fuse", or "fuse.SUBTYPE" whatever -o subtype= named. */
static int is_fuse(const char *fstype)
{
	return strncmp(fstype, "fuse", 4) == 0 && (fstype[4] == '.' || fstype[4] == ' ');
}

/*
 * "MAJOR:MINOR" of the newest FUSE mount at MOUNTPOINT (ours, while INIT is
 * answered), from a line "ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE ...".
 */
static int find_bdi(const char *mountpoint, char *bdi, size_t n)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, *fields[5], *save, *sep;
	size_t cap = 0;
	int found = -ENOENT;

	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0) {
		if (!(sep = strstr(line, " - ")) || !is_fuse(sep + 3))
			continue;
		*sep = '\0';
		fields[0] = strtok_r(line, " ", &save);
		for (int i = 1; i < 5 && fields[i - 1]; i++)
			fields[i] = strtok_r(NULL, " ", &save);
		if (!fields[0] || !fields[4])
			continue;
		unescape(fields[4]);
		if (strcmp(fields[4], mountpoint) == 0 && strlen(fields[2]) < n) {
			strcpy(bdi, fields[2]); /* a later line is mounted over an earlier one */
			found = 0;
		}
	}
	free(line);
	fclose(f);
	return found;
}

int readahead_set(const char *mountpoint, unsigned kb)
{
	char bdi[32], path[64], value[24];
	int fd, len, rc;

	if ((rc = find_bdi(mountpoint, bdi, sizeof(bdi))) < 0)
		return rc;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", bdi);
	len = snprintf(value, sizeof(value), "%u", kb);
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) < 0)
		return -errno;
	rc = write(fd, value, (size_t)len) == len ? 0 : errno ? -errno : -EIO;
	close(fd);
	return rc;
}
