/*
 * A shard that is an object over HTTP(S), read in aligned blocks kept in a bounded
 * memory cache that all shards of a source share.
 *
 * A read claims the blocks it touches that no one holds (and, when it follows the
 * previous read, a readahead window after them), fetches the claimed ones in parallel,
 * one range request each, and copies out.  A block another reader is fetching is waited
 * for, not fetched twice.  Blocks that find no room in the cache are fetched for the read
 * alone.  The object is pinned by its first request (http.h); once any answer shows it
 * changed, every read fails with -EIO and the daemon says why, once.
 */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "diskcache.h"
#include "http.h"

/* Threads that fetch blocks, per source: requests in flight at most (and the readers'). */
#define FETCHERS 16
/* What is fetched ahead of a reader that goes on where it stopped (at most a quarter of the
 * cache), and how much of it one request brings. */
#define READAHEAD_BYTES (16u << 20)
#define RUN_BYTES (4u << 20)
#define RUN_BLOCKS_MAX 1024 /* RUN_BYTES of the smallest blocks (4 KiB) */

enum slot_state { EMPTY, LOADING, READY };

struct slot {
	const struct store *owner;
	uint64_t block;
	enum slot_state state;
	uint32_t len;
	bool used;     /* copied from since the clock hand last passed: kept one more round */
	unsigned pins; /* readers that fetched it and have yet to copy from it: not reused */
	uint8_t *data;
	int next;      /* in its hash chain, or -1 */
};

struct block_cache {
	pthread_mutex_t lock;
	pthread_cond_t loaded;
	uint32_t block_size;
	size_t n_slots, n_buckets;
	struct slot *slots;
	int *buckets;
	size_t hand;   /* the clock's: where the next search for a slot to reuse starts */
};

struct http_store {
	struct store s;
	struct http_object obj;
	const struct http_settings *settings; /* the source's, as are pool, cache and disk */
	struct block_cache *cache;
	struct http_pool *pool;
	struct diskcache *disk;
	struct fetchers *fetchers;
	char *disk_key;       /* the prefix of its blocks' keys on disk, or NULL: not kept there */
	uint8_t *head;        /* what the first request brought, until the header is read */
	size_t head_len;
	atomic_uint_fast64_t next_off; /* where a sequential reader's next read starts */
	atomic_bool changed;
	atomic_bool said;     /* the change was logged */
	atomic_bool ahead_busy; /* a readahead window is being fetched */
};

struct block_cache *block_cache_new(uint32_t block_size, uint64_t cache_bytes)
{
	struct block_cache *c = calloc(1, sizeof(*c));
	uint64_t n = cache_bytes / block_size;

	if (!c)
		return NULL;
	c->block_size = block_size;
	c->n_slots = n < STORE_MIN_BLOCKS ? STORE_MIN_BLOCKS : (size_t)n; /* main.c refuses less */
	c->n_buckets = c->n_slots * 2;
	c->slots = calloc(c->n_slots, sizeof(*c->slots));
	c->buckets = malloc(c->n_buckets * sizeof(*c->buckets));
	if (!c->slots || !c->buckets) {
		block_cache_free(c);
		return NULL;
	}
	for (size_t i = 0; i < c->n_buckets; i++)
		c->buckets[i] = -1;
	for (size_t i = 0; i < c->n_slots; i++)
		c->slots[i].next = -1;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->loaded, NULL);
	return c;
}

void block_cache_free(struct block_cache *c)
{
	if (!c)
		return;
	for (size_t i = 0; c->slots && i < c->n_slots; i++)
		free(c->slots[i].data);
	free(c->slots);
	free(c->buckets);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->loaded);
	free(c);
}

static size_t bucket_of(const struct block_cache *c, const struct store *owner, uint64_t block)
{
	uint64_t h = ((uint64_t)(uintptr_t)owner >> 4) * 0x9E3779B97F4A7C15ull ^ block * 0xC2B2AE3D27D4EB4Full;

	return (size_t)((h ^ (h >> 29)) % c->n_buckets);
}

/* Under lock: the slot holding (owner, block), or NULL. */
static struct slot *find(struct block_cache *c, const struct store *owner, uint64_t block)
{
	for (int i = c->buckets[bucket_of(c, owner, block)]; i >= 0; i = c->slots[i].next)
		if (c->slots[i].owner == owner && c->slots[i].block == block)
			return &c->slots[i];
	return NULL;
}

static void unlink_slot(struct block_cache *c, struct slot *s)
{
	int *p = &c->buckets[bucket_of(c, s->owner, s->block)];
	int me = (int)(s - c->slots);

	while (*p >= 0 && *p != me)
		p = &c->slots[*p].next;
	if (*p == me)
		*p = s->next;
	s->next = -1;
	s->owner = NULL;
	s->state = EMPTY;
}

/* Under lock: a slot for (owner, block), LOADING: the first the clock hand finds that is
 * empty, or full and not used since the hand last passed (the CLOCK approximation of
 * least recently used, in constant time per claim on average); NULL when every slot is
 * being loaded or memory is short. */
static struct slot *claim(struct block_cache *c, const struct store *owner, uint64_t block)
{
	struct slot *victim = NULL;

	for (size_t step = 0; step < 2 * c->n_slots && !victim; step++) {
		struct slot *s = &c->slots[c->hand];
		c->hand = (c->hand + 1) % c->n_slots;
		if (s->state == LOADING || s->pins)
			continue;
		if (s->state == READY && s->used)
			s->used = false;
		else
			victim = s;
	}
	if (!victim || (!victim->data && !(victim->data = malloc(c->block_size))))
		return NULL;
	if (victim->owner)
		unlink_slot(c, victim);
	size_t b = bucket_of(c, owner, block);
	*victim = (struct slot){owner, block, LOADING, 0, true, 0, victim->data, c->buckets[b]};
	c->buckets[b] = (int)(victim - c->slots);
	return victim;
}

/* One block to fetch, into its slot's buffer or the read's own. */
struct fetch {
	uint64_t block;
	struct slot *slot; /* NULL: fetched for this read only */
	uint8_t *data;
	uint32_t len;
	int rc;
	char err[ST_ERR_LEN];
};

struct batch {
	struct http_store *h;
	struct fetch *f;
	size_t n;
	size_t next, done;    /* under the fetchers' lock: items taken, items finished */
	struct batch *queued; /* the next batch in the fetchers' queue */
	void (*finish)(struct batch *b); /* readahead's: called by whoever finishes the last item */
	struct slot **held; /* a read's: the slots it copies from, pinned until it has (no readahead) */
	size_t n_held;
	const uint8_t **src; /* a read's: each block's bytes, for the copy */
};

static uint32_t block_len(const struct http_store *h, uint64_t block)
{
	uint64_t at = block * h->cache->block_size, left = h->s.size - at;

	return left < h->cache->block_size ? (uint32_t)left : h->cache->block_size;
}

static void note_failure(struct http_store *h, int rc, const char *err)
{
	if (rc == -ESTALE)
		atomic_store(&h->changed, true);
	if (rc != -ESTALE || !atomic_exchange(&h->said, true))
		fprintf(stderr, "safetensorsfs: %s\n", err);
}

/*
 * The threads that fetch blocks for every shard of a source: a read queues its batch and
 * fetches too, the threads take the batch's blocks one by one, and whoever finishes the
 * last one ends the batch (wakes its reader, or settles a readahead window).  Started
 * once: a thread per batch would cost a clone per read.
 */
struct fetchers {
	pthread_mutex_t lock;
	pthread_cond_t work, finished;
	struct batch *head, *tail;
	bool stop;
	pthread_t threads[FETCHERS];
	size_t n_threads;
};

/* Block F's key on disk (the block number first: nothing of it is ever cut off), or NULL. */
static char *block_key(const struct http_store *h, const struct fetch *f)
{
	char *key;

	if (!h->disk_key || asprintf(&key, "%llu\n%s", (unsigned long long)f->block, h->disk_key) < 0)
		return NULL;
	return key;
}

/* Whether block F came from the disk cache. */
static bool from_disk(const struct http_store *h, struct fetch *f)
{
	char *key = block_key(h, f);
	bool hit = key && diskcache_get(h->disk, key, f->data, f->len) == 0;

	free(key);
	if (hit)
		f->rc = 0;
	return hit;
}

/* Blocks F[0..k) (consecutive) in one range request, each into its buffer; kept on disk. */
static void fetch_run(struct http_store *h, struct fetch *f, size_t k)
{
	struct http_piece pieces[RUN_BLOCKS_MAX];
	size_t got;

	for (size_t i = 0; i < k; i++)
		pieces[i] = (struct http_piece){f[i].data, f[i].len};
	int rc = http_read_pieces(h->settings, h->pool, &h->obj, pieces, k, f[0].block * h->cache->block_size, &got,
				  f[0].err);
	for (size_t i = 0; i < k; i++) {
		f[i].rc = rc;
		if (i)
			memcpy(f[i].err, f[0].err, sizeof(f[i].err));
		char *key = rc == 0 ? block_key(h, &f[i]) : NULL;
		if (key)
			diskcache_put(h->disk, key, f[i].data, f[i].len);
		free(key);
	}
}

/* Blocks F[0..k): those on disk from there, the others from the network, one request per
 * consecutive stretch of them. */
static void fetch_some(struct http_store *h, struct fetch *f, size_t k)
{
	size_t start = 0;

	for (size_t i = 0; i <= k; i++) {
		if (i < k && !(h->disk_key && from_disk(h, &f[i])))
			continue;
		if (i > start)
			fetch_run(h, f + start, i - start);
		start = i + 1;
	}
}

/* How many blocks one request may bring: a sequential reader's are fetched RUN_BYTES at a
 * time, so that a request's cost (on the server, and here) is paid once per run. */
static size_t run_blocks(const struct http_store *h)
{
	size_t n = RUN_BYTES / h->cache->block_size;

	return n < 1 ? 1 : n > RUN_BLOCKS_MAX ? RUN_BLOCKS_MAX : n;
}

/* Under the lock: the next blocks of the queue's first batch, as many consecutive ones as
 * one request may bring (*k); the batch leaves the queue once all of its blocks are taken.
 * NULL when the queue is empty. */
static struct fetch *take(struct fetchers *fp, struct batch **from, size_t *k)
{
	struct batch *b = fp->head;

	if (!b)
		return NULL;
	struct fetch *f = &b->f[b->next];
	size_t max = run_blocks(b->h);
	*k = 1;
	while (*k < max && b->next + *k < b->n && f[*k].block == f[*k - 1].block + 1)
		(*k)++;
	b->next += *k;
	if (b->next == b->n && !(fp->head = b->queued))
		fp->tail = NULL;
	*from = b;
	return f;
}

/* Fetches F[0..k) of B; the last block done ends B.  B is not touched after that. */
static void do_some(struct fetchers *fp, struct batch *b, struct fetch *f, size_t k)
{
	fetch_some(b->h, f, k);
	pthread_mutex_lock(&fp->lock);
	/* A reader's batch may be gone the moment the lock is let go: read it before. */
	void (*finish)(struct batch *) = (b->done += k) == b->n ? b->finish : NULL;
	if (b->done == b->n && !finish)
		pthread_cond_broadcast(&fp->finished);
	pthread_mutex_unlock(&fp->lock);
	if (finish)
		finish(b);
}

static void *fetcher(void *arg)
{
	struct fetchers *fp = arg;
	struct batch *b;
	struct fetch *f;
	size_t k;

	pthread_mutex_lock(&fp->lock);
	for (;;) {
		while (!fp->stop && !fp->head)
			pthread_cond_wait(&fp->work, &fp->lock);
		if (fp->stop && !fp->head)
			break;
		f = take(fp, &b, &k);
		pthread_mutex_unlock(&fp->lock);
		do_some(fp, b, f, k);
		pthread_mutex_lock(&fp->lock);
	}
	pthread_mutex_unlock(&fp->lock);
	return NULL;
}

static void submit(struct fetchers *fp, struct batch *b)
{
	b->next = b->done = 0;
	b->queued = NULL;
	pthread_mutex_lock(&fp->lock);
	if (fp->tail)
		fp->tail->queued = b;
	else
		fp->head = b;
	fp->tail = b;
	pthread_cond_broadcast(&fp->work);
	pthread_mutex_unlock(&fp->lock);
}

/* Fetches every block of the batch: the fetchers and this thread, until all are done. */
static void fetch_all(struct fetchers *fp, struct batch *b)
{
	if (b->n == 1) { /* nothing to share */
		fetch_some(b->h, b->f, 1);
		return;
	}
	submit(fp, b);
	pthread_mutex_lock(&fp->lock);
	while (b->next < b->n && fp->head == b) {
		struct batch *from;
		size_t k;
		struct fetch *f = take(fp, &from, &k);
		pthread_mutex_unlock(&fp->lock);
		do_some(fp, from, f, k);
		pthread_mutex_lock(&fp->lock);
	}
	while (b->done < b->n)
		pthread_cond_wait(&fp->finished, &fp->lock);
	pthread_mutex_unlock(&fp->lock);
}

struct fetchers *fetchers_new(void)
{
	struct fetchers *fp = calloc(1, sizeof(*fp));

	if (!fp)
		return NULL;
	pthread_mutex_init(&fp->lock, NULL);
	pthread_cond_init(&fp->work, NULL);
	pthread_cond_init(&fp->finished, NULL);
	while (fp->n_threads < FETCHERS && pthread_create(&fp->threads[fp->n_threads], NULL, fetcher, fp) == 0)
		fp->n_threads++;
	if (fp->n_threads == 0) {
		fetchers_free(fp);
		return NULL;
	}
	return fp;
}

void fetchers_free(struct fetchers *fp)
{
	if (!fp)
		return;
	pthread_mutex_lock(&fp->lock);
	fp->stop = true;
	pthread_cond_broadcast(&fp->work);
	pthread_mutex_unlock(&fp->lock);
	for (size_t i = 0; i < fp->n_threads; i++)
		pthread_join(fp->threads[i], NULL);
	pthread_mutex_destroy(&fp->lock);
	pthread_cond_destroy(&fp->work);
	pthread_cond_destroy(&fp->finished);
	free(fp);
}

/* Under lock: adds block to the batch if nobody holds it; readahead blocks need a slot. */
static int want(struct http_store *h, struct batch *b, uint64_t block)
{
	struct block_cache *c = h->cache;
	struct slot *s = find(c, &h->s, block);
	bool fetch = !s;

	if (!s)
		s = claim(c, &h->s, block);
	if (!s && !b->held)
		return 0; /* readahead only where there is room */
	if (s && b->held) { /* until this read has copied from it, nothing else takes it */
		s->pins++;
		b->held[b->n_held++] = s;
	}
	if (!fetch)
		return 0;
	struct fetch *f = &b->f[b->n];
	*f = (struct fetch){.block = block, .slot = s, .len = block_len(h, block)};
	if (!(f->data = s ? s->data : malloc(f->len)))
		return -ENOMEM;
	b->n++;
	return 0;
}

/* Under lock: what the read held may be reused again. */
static void let_go(struct batch *b)
{
	for (size_t i = 0; i < b->n_held; i++)
		b->held[i]->pins--;
	b->n_held = 0;
}

static bool holds(const struct batch *b, const struct slot *s)
{
	for (size_t i = 0; i < b->n_held; i++)
		if (b->held[i] == s)
			return true;
	return false;
}

/* Under lock: where each block of [first, last] is (src[k - first]), waiting for those
 * others load; 1 when one is gone again (evicted, or its loader failed) or is no longer
 * the slot this read holds, for the caller to fetch it anew.  What it finds stays put
 * after the lock is let go: the read holds those slots, and its own buffers are its own. */
static int gather(struct http_store *h, const struct batch *b, uint64_t first, uint64_t last, const uint8_t **src)
{
	struct block_cache *c = h->cache;

	for (uint64_t block = first; block <= last; block++) {
		const uint8_t *data = NULL;
		for (size_t i = 0; i < b->n && !data; i++)
			if (b->f[i].block == block && !b->f[i].slot && b->f[i].rc == 0)
				data = b->f[i].data;
		struct slot *s;
		while (!data && (s = find(c, &h->s, block)) && s->state == LOADING)
			pthread_cond_wait(&c->loaded, &c->lock);
		if (!data) {
			if (!(s = find(c, &h->s, block)) || s->state != READY || !holds(b, s))
				return 1;
			s->used = true;
			data = s->data;
		}
		src[block - first] = data;
	}
	return 0;
}

/* [off, off+len) out of the blocks gather found, without the lock. */
static void copy_out(const uint8_t **src, uint64_t bs, uint8_t *buf, size_t len, uint64_t off)
{
	uint64_t first = off / bs;

	for (uint64_t pos = off; pos < off + len;) {
		uint64_t block = pos / bs, from = pos - block * bs;
		size_t n = (size_t)(bs - from < off + len - pos ? bs - from : off + len - pos);
		memcpy(buf + (pos - off), src[block - first] + from, n);
		pos += n;
	}
}

static void free_batch(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++)
		if (!b->f[i].slot)
			free(b->f[i].data);
	b->n = 0;
}

/* Under lock: claims that will not be fetched go back, and their waiters go on. */
static void settle_unfetched(struct http_store *h, struct batch *b)
{
	for (size_t i = 0; i < b->n; i++)
		if (b->f[i].slot)
			unlink_slot(h->cache, b->f[i].slot);
	free_batch(b);
	pthread_cond_broadcast(&h->cache->loaded);
}

/* Under lock: the batch's results into the cache; the first failure (logged with `say`). */
static int settle(struct http_store *h, struct batch *b, bool say)
{
	int rc = 0;

	for (size_t i = 0; i < b->n; i++) {
		struct fetch *f = &b->f[i];
		if (f->slot) {
			f->slot->len = f->len;
			if (f->rc == 0)
				f->slot->state = READY;
			else
				unlink_slot(h->cache, f->slot);
		}
		if (f->rc && !rc) {
			rc = f->rc;
			if (say || rc == -ESTALE)
				note_failure(h, f->rc, f->err);
		}
	}
	pthread_cond_broadcast(&h->cache->loaded);
	return rc;
}

/* The readahead window's end, on the fetcher that finished its last block: no reader waited
 * on it unless it needed one of its blocks.  One window at a time per shard. */
static void ahead_done(struct batch *b)
{
	struct http_store *h = b->h;

	pthread_mutex_lock(&h->cache->lock);
	settle(h, b, false);
	pthread_mutex_unlock(&h->cache->lock);
	free(b->f);
	free(b);
	atomic_store(&h->ahead_busy, false);
}

static void read_ahead(struct http_store *h, uint64_t from, uint64_t to)
{
	struct batch *b;

	if (from > to || atomic_exchange(&h->ahead_busy, true))
		return;
	b = calloc(1, sizeof(*b));
	if (!b || !(b->f = calloc((size_t)(to - from + 1), sizeof(*b->f))))
		goto done;
	b->h = h;
	pthread_mutex_lock(&h->cache->lock);
	for (uint64_t k = from; k <= to && want(h, b, k) == 0; k++)
		;
	pthread_mutex_unlock(&h->cache->lock);
	if (b->n) {
		b->finish = ahead_done;
		submit(h->fetchers, b);
		return;
	}
done:
	atomic_store(&h->ahead_busy, false);
	if (b)
		free(b->f);
	free(b);
}

/* One round: claim what nobody holds, fetch it, copy out.  1: a block was lost, go again. */
static int read_round(struct http_store *h, struct batch *b, uint8_t *buf, size_t len, uint64_t off,
		      uint64_t ahead_to)
{
	struct block_cache *c = h->cache;
	uint64_t bs = c->block_size, first = off / bs, last = (off + len - 1) / bs;
	int rc = 0;

	pthread_mutex_lock(&c->lock);
	for (uint64_t k = first; k <= last && !rc; k++)
		rc = want(h, b, k);
	if (rc) {
		let_go(b);
		settle_unfetched(h, b);
	}
	pthread_mutex_unlock(&c->lock);
	if (rc)
		return rc;
	read_ahead(h, last + 1, ahead_to);
	if (b->n)
		fetch_all(h->fetchers, b);
	pthread_mutex_lock(&c->lock);
	rc = settle(h, b, true);
	if (!rc)
		rc = gather(h, b, first, last, b->src);
	pthread_mutex_unlock(&c->lock);
	if (!rc)
		copy_out(b->src, bs, buf, len, off);
	pthread_mutex_lock(&c->lock);
	let_go(b);
	pthread_mutex_unlock(&c->lock);
	free_batch(b);
	return rc;
}

static int http_read(struct store *s, void *buf, size_t len, uint64_t off)
{
	struct http_store *h = (struct http_store *)s;
	uint64_t bs = h->cache->block_size, blocks = (s->size + bs - 1) / bs;
	int rc = 1;

	if (off > s->size || len > s->size - off)
		return -EIO;
	bool sequential = atomic_exchange(&h->next_off, off + len) == off && off > 0;
	/* A window the cache cannot hold would evict itself before it is read. */
	uint64_t window = READAHEAD_BYTES / bs < h->cache->n_slots / 4 ? READAHEAD_BYTES / bs : h->cache->n_slots / 4;
	uint64_t last = (off + len - 1) / bs, ahead_to = sequential ? last + window : 0;
	size_t blocks_read = (size_t)(last - off / bs + 1);
	struct batch b = {.h = h, .f = calloc(blocks_read, sizeof(*b.f)), .held = calloc(blocks_read, sizeof(*b.held)),
			  .src = calloc(blocks_read, sizeof(*b.src))};
	if (!b.f || !b.held || !b.src) {
		free(b.f);
		free(b.held);
		free(b.src);
		return -ENOMEM;
	}
	if (ahead_to >= blocks)
		ahead_to = blocks - 1;
	for (int tries = 0; rc == 1 && tries < 4; tries++)
		rc = atomic_load(&h->changed) ? -EIO : read_round(h, &b, buf, len, off, tries ? 0 : ahead_to);
	free(b.f);
	free(b.held);
	free(b.src);
	return rc ? -EIO : 0;
}

static size_t http_read_cached(struct store *s, void *buf, size_t len, uint64_t off)
{
	struct http_store *h = (struct http_store *)s;
	struct block_cache *c = h->cache;
	uint64_t bs = c->block_size;
	size_t done = 0;

	pthread_mutex_lock(&c->lock);
	while (done < len) {
		uint64_t pos = off + done, block = pos / bs, from = pos - block * bs;
		struct slot *sl = find(c, s, block);
		if (!sl || sl->state != READY)
			break;
		size_t n = (size_t)(bs - from < len - done ? bs - from : len - done);
		memcpy((uint8_t *)buf + done, sl->data + from, n);
		sl->used = true;
		done += n;
	}
	pthread_mutex_unlock(&c->lock);
	return done;
}

/* One request for what the first one did not bring: the header at mount. */
static int http_read_direct(struct store *s, void *buf, size_t len, uint64_t off)
{
	struct http_store *h = (struct http_store *)s;
	size_t from_head = 0, got;
	char err[ST_ERR_LEN];
	int rc;

	if (off > s->size || len > s->size - off)
		return -EIO;
	if (off < h->head_len) {
		from_head = h->head_len - off < len ? (size_t)(h->head_len - off) : len;
		memcpy(buf, h->head + off, from_head);
	}
	if (from_head == len)
		return 0;
	rc = http_read_range(h->settings, h->pool, &h->obj, (uint8_t *)buf + from_head, off + from_head,
			     len - from_head, &got, err);
	if (rc)
		note_failure(h, rc, err);
	return rc ? -EIO : 0;
}

static bool http_changed(struct store *s)
{
	return atomic_load(&((struct http_store *)s)->changed);
}

static void http_close(struct store *s)
{
	struct http_store *h = (struct http_store *)s;

	while (atomic_load(&h->ahead_busy)) { /* the readahead thread uses h */
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	}
	if (h->cache) { /* its blocks must not be found by a store that reuses the address */
		pthread_mutex_lock(&h->cache->lock);
		for (size_t i = 0; i < h->cache->n_slots; i++)
			if (h->cache->slots[i].owner == s)
				unlink_slot(h->cache, &h->cache->slots[i]);
		pthread_mutex_unlock(&h->cache->lock);
	}
	http_object_free(&h->obj);
	free(h->disk_key);
	free(h->head);
	free(h);
}

static const struct store_ops http_ops = {
	.read = http_read,
	.read_direct = http_read_direct,
	.read_cached = http_read_cached,
	.changed = http_changed,
	.close = http_close,
};

/* The blocks of one version of one object, whatever credentials reach it: the whole URL
 * but its user:password@, never cut short. */
static char *disk_key(const struct http_store *h)
{
	const char *version = h->obj.any_etag ? h->obj.any_etag : h->obj.last_modified, *url = h->obj.url;
	const char *scheme = strstr(url, "://"), *at = strrchr(url, '@');
	char *key;

	/* A query may be what tells two objects apart, and may hold a signature, which must not
	 * be written to disk: such URLs are cached in memory only. */
	if (!h->disk || !version || !scheme || strchr(url, '?'))
		return NULL;
	if (asprintf(&key, "%.*s%s\n%s\n%llu\n%u\n", (int)(scheme + 3 - url), url, at ? at + 1 : scheme + 3, version,
		     (unsigned long long)h->obj.size, h->cache->block_size) < 0)
		return NULL;
	return key;
}

int store_http_open(const char *url, const struct http_source *from, struct store **out, char err[ST_ERR_LEN])
{
	const struct http_settings *settings = from->settings;
	struct block_cache *cache = from->cache;
	struct http_store *h = calloc(1, sizeof(*h));
	int rc;

	*out = NULL;
	if (!h || !(h->obj.url = strdup(url)) ||
	    !(h->head = malloc(cache->block_size))) {
		if (h)
			http_close(&h->s);
		return -ENOMEM;
	}
	h->s = (struct store){.ops = &http_ops, .fd = -1};
	h->obj.auth = from->auth;
	h->pool = from->pool;
	h->fetchers = from->fetchers;
	h->disk = from->disk;
	h->settings = settings;
	h->cache = NULL; /* not in the cache until pinned */
	rc = http_read_range(settings, h->pool, &h->obj, h->head, 0, cache->block_size, &h->head_len, err);
	if (rc) {
		http_close(&h->s);
		return rc;
	}
	h->s.size = h->obj.size;
	h->cache = cache;
	if (!h->obj.any_etag && !h->obj.last_modified) {
		char shown[ST_ERR_LEN / 2];
		http_redact(url, shown, sizeof(shown));
		fprintf(stderr, "safetensorsfs: %s: warning: the server sends neither ETag nor Last-Modified: "
			"a change that keeps the object's size cannot be detected\n", shown);
	}
	h->disk_key = disk_key(h);
	/* The tree's times: the object's, else the mount's. */
	if (!http_time(h->obj.last_modified, &h->s.mtime.tv_sec))
		clock_gettime(CLOCK_REALTIME, &h->s.mtime);
	*out = &h->s;
	return 0;
}

/* After the header is parsed, the first block goes to the cache (the first tensors are in
 * it) and the copy kept for the header is freed. */
void store_http_done_opening(struct store *s)
{
	struct http_store *h = (struct http_store *)s;

	if (s->ops != &http_ops || !h->head)
		return;
	pthread_mutex_lock(&h->cache->lock);
	struct slot *sl = h->head_len == block_len(h, 0) ? claim(h->cache, s, 0) : NULL;
	if (sl) {
		memcpy(sl->data, h->head, h->head_len);
		sl->len = (uint32_t)h->head_len;
		sl->state = READY;
	}
	pthread_mutex_unlock(&h->cache->lock);
	free(h->head);
	h->head = NULL;
	h->head_len = 0;
}
