/*
 * mailerq.h — the MailerQ plugin API, for plugins written in C or C++.
 *
 * A MailerQ plugin is a shared object. The host (MailerQ, or this project's
 * open host `mq-host`) loads every plugin in its plugin directory in byte
 * order of file name (`10-a.so` before `20-b.so`), looks up the `mq_*`
 * functions below by name with dlsym() and calls only those the plugin
 * defines. The plugin calls back into the host through the `MQ_*`
 * functions, which the host provides as global symbols: a plugin does not
 * link against any library to get them (leave them undefined; do not link
 * with `-Wl,-z,defs`).
 *
 * Writing a plugin
 * ----------------
 *
 *   Only mq_version() is required. Define any of the other hooks you need,
 *   with exactly the prototypes declared below (they are declared here, with
 *   MQ_EXPORT, so a typo in a signature is a compile error and the symbols
 *   stay exported even with -fvisibility=hidden).
 *
 *     #include <mailerq.h>
 *
 *     int mq_version(void) { return MQ_API_VERSION; }
 *
 *     bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
 *     {
 *         (void)context;
 *         (void)connection;
 *         const char *email = MQ_email(address);
 *         MQ_log(MQ_INFO, email ? email : "(no address)");
 *         return false;   // did not take control: the host goes on
 *     }
 *
 *   Build it with:
 *
 *     cc -std=c11 -shared -fPIC -O2 -Wall -Wextra -I<dir of mailerq.h> \
 *        -o 50-myplugin.so myplugin.c
 *
 * Control flow
 * ------------
 *
 *   Every `bool mq_smtp_*` hook may take control of the connection (or
 *   message) it is called for:
 *
 *   - return false: the plugin did not take control; the host calls the
 *     same hook in the next plugin, or does its own work after the last.
 *   - return true: the plugin now holds control. The host leaves this
 *     chain alone until the plugin hands control back by calling EXACTLY
 *     ONE of MQ_continue() (go on with the next plugin), MQ_complete()
 *     (skip the remaining plugins for this step) or MQ_retry() (run this
 *     step again from the first plugin) on the connection.
 *
 *   Hand control back from the worker's event loop — a timer or I/O
 *   callback registered with MQ_startTimer()/MQ_ioWatch() — never from
 *   another thread and never from inside the hook call itself (to resume
 *   "at once", start a 0-second timer and resume from its callback). A
 *   plugin that never hands control back leaks the message: it is never
 *   processed. mq-host ignores and logs a second resume and refuses a
 *   resume from another thread; MailerQ does not check.
 *
 * Threads
 * -------
 *
 *   The host runs several worker threads, each with its own MQ_Context and
 *   event loop. All callbacks for a connection run on its worker. Only
 *   MQ_log() is thread-safe; every other MQ_* function must be called on
 *   the worker thread that owns the context or connection passed to it.
 *   Hooks and callbacks must not block: a blocking call stalls every
 *   connection of that worker. mq_initialize, mq_cleanup and the
 *   context_* hooks may block.
 *
 * Lifetimes
 * ---------
 *
 *   The MQ_Connection, MQ_Message and MQ_Address pointers passed to a hook
 *   are valid during the call and, if the hook returned true, until the
 *   plugin hands control back. An MQ_Connection of an incoming connection
 *   stays valid from mq_smtp_in_connect until mq_smtp_in_close has been
 *   handled. Strings returned by the host (MQ_email, MQ_recipient,
 *   MQ_mime) are owned by the host and valid until the object is
 *   next changed or control is handed back; copy them to keep them longer.
 *   Every pointer a plugin receives is meant for that plugin only.
 */
#ifndef MAILERQ_H
#define MAILERQ_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ----------------------------------------------------------------------
 * Constants
 * -------------------------------------------------------------------- */

/** The API version. mq_version() must return exactly the number of the
 *  MailerQ that loads the plugin, or it is refused. This header's number is
 *  mq-host's default (`mq-host --api-version N` runs as another); build
 *  for your MailerQ with its own mailerq.h, or with -DMQ_API_VERSION=N. */
#ifndef MQ_API_VERSION
#define MQ_API_VERSION 1
#endif

/** Watch a file descriptor for readability (MQ_ioWatch `events`). */
#define MQ_READ 1
/** Watch a file descriptor for writability (MQ_ioWatch `events`). */
#define MQ_WRITE 2

/** Log priority: critical. */
#define MQ_CRIT 1
/** Log priority: warning. */
#define MQ_WARN 2
/** Log priority: information. */
#define MQ_INFO 3

/** Marks a hook a plugin defines as exported, also in builds that use
 *  -fvisibility=hidden. Every hook below is declared with it; the
 *  definition in your plugin inherits it. */
#if defined(__GNUC__) || defined(__clang__)
#define MQ_EXPORT __attribute__((visibility("default")))
#else
#define MQ_EXPORT
#endif

/* ----------------------------------------------------------------------
 * Opaque handles (owned by the host; never allocate or free them)
 * -------------------------------------------------------------------- */

/** A worker thread's context: its event loop and the plugin's
 *  per-worker data. */
typedef struct MQ_Context MQ_Context;
/** An SMTP connection: incoming (smtp_in_*) or outgoing (smtp_out_*). */
typedef struct MQ_Connection MQ_Connection;
/** A message: a wrapper over its MailerQ JSON object. */
typedef struct MQ_Message MQ_Message;
/** An envelope (MAIL FROM) or recipient (RCPT TO) address. */
typedef struct MQ_Address MQ_Address;
/** A file descriptor watcher started with MQ_ioWatch(). */
typedef struct MQ_IOWatcher MQ_IOWatcher;
/** A one-shot timer started with MQ_startTimer(). */
typedef struct MQ_Timer MQ_Timer;

/** libev's loop type (only as returned by MQ_ev()). */
struct ev_loop;

/** Called on the worker's loop while `fd` is ready for any of the watched
 *  `events` (level-triggered, as libev: it fires again on every loop turn
 *  until the condition is cleared). `events` holds the ready subset
 *  (MQ_READ and/or MQ_WRITE); `data` is the pointer given to
 *  MQ_ioWatch(). */
typedef void (*MQ_IOCallback)(MQ_IOWatcher *watcher, int fd, int events, void *data);

/** Called once on the worker's loop when a timer fires; `data` is the
 *  pointer given to MQ_startTimer(). A fired timer is freed by the host:
 *  from the callback on, do not stop, reset or otherwise use its handle. */
typedef void (*MQ_TimerCallback)(void *data);

/* ----------------------------------------------------------------------
 * Hooks: functions a plugin exports (define the ones you need)
 * -------------------------------------------------------------------- */

/** Required. Called at load; return MQ_API_VERSION. A plugin that lacks
 *  this symbol or returns another number is refused. */
MQ_EXPORT int mq_version(void);

/** Called once, after all plugins are loaded and before any other hook.
 *  May block (read configuration here). Cannot take control. */
MQ_EXPORT void mq_initialize(void);

/** Called once, before the host exits, after every context was cleaned
 *  up. Free global state here. Cannot take control. */
MQ_EXPORT void mq_cleanup(void);

/** Called once per worker thread at start-up, on that thread, before any
 *  traffic; the host waits for all workers. May block. Cannot take
 *  control. A good place to MQ_setContextData(). */
MQ_EXPORT void mq_context_initialize(MQ_Context *context);

/** Called once per worker thread before it stops, on that thread. Free
 *  what you stored with MQ_setContextData() here. May block. Cannot take
 *  control. */
MQ_EXPORT void mq_context_cleanup(MQ_Context *context);

/** An incoming connection was accepted (the first time the plugin sees
 *  it).
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_connect(MQ_Context *context, MQ_Connection *connection);

/** An incoming connection became TLS (STARTTLS).
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_secure(MQ_Context *context, MQ_Connection *connection);

/** The client sent AUTH credentials. `login` and `passwd` are NOT
 *  NUL-terminated: use `loginsize` and `passwdsize`. Accept them with
 *  MQ_setAuthenticated(connection, true); a plugin that sets false after
 *  another set true makes the login fail (take control to check the
 *  password asynchronously).
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_authenticate(MQ_Context *context, MQ_Connection *connection, const char *login, size_t loginsize, const char *passwd, size_t passwdsize);

/** MAIL FROM was received; `address` is the envelope sender (MQ_email()
 *  may return NULL or "" for a bounce).
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_mailfrom(MQ_Context *context, MQ_Connection *connection, MQ_Address *address);

/** A RCPT TO was received; `address` is the recipient. Called once per
 *  recipient. A plugin may MQ_send() its own reply (e.g. a 550) and take
 *  control, then MQ_complete() to skip the remaining plugins.
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address);

/** The MIME data of a message was received: `size` bytes at `mime` (not
 *  necessarily NUL-terminated).
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_data(MQ_Context *context, MQ_Connection *connection, const char *mime, size_t size);

/** An incoming message was turned into its JSON form, once per recipient.
 *  The setters (MQ_setEnvelope, MQ_setRecipient, MQ_setMime, MQ_setLocal)
 *  change the JSON that will be published.
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_message(MQ_Context *context, MQ_Connection *connection, MQ_Message *message);

/** An incoming connection was closed: the last time the plugin sees it.
 *  Free what you stored with MQ_setConnectionData() here (the connection
 *  stays valid until control is handed back).
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_in_close(MQ_Context *context, MQ_Connection *connection);

/** An outgoing delivery entered the DATA state. The plugin may generate or
 *  rewrite the MIME with MQ_setMime(); the setters change what goes over
 *  SMTP, not the stored JSON.
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_out_data(MQ_Context *context, MQ_Connection *connection, MQ_Message *message);

/** All MIME data of an outgoing delivery was sent, before the remote
 *  accepted it (hold control briefly: the remote may time out).
 *  May take control: return false and the host goes on with the next
 *  plugin; return true and the plugin holds control until it calls exactly
 *  one of MQ_continue/MQ_complete/MQ_retry, later, from the event loop
 *  (never from another thread). */
MQ_EXPORT bool mq_smtp_out_sent(MQ_Context *context, MQ_Connection *connection, MQ_Message *message);

/* ----------------------------------------------------------------------
 * Host functions: logging
 * -------------------------------------------------------------------- */

/** Logs one line. `priority` is MQ_CRIT, MQ_WARN or MQ_INFO (anything else
 *  is logged as info, marked invalid). `message` is a NUL-terminated
 *  string, copied by the host. Thread-safe: the only host function that
 *  may be called from any thread. */
void MQ_log(int priority, const char *message);

/* ----------------------------------------------------------------------
 * Host functions: context (one per worker thread)
 * -------------------------------------------------------------------- */

/** The pointer this plugin stored with MQ_setContextData() for this
 *  worker; NULL until set. Each plugin has its own slot: other plugins
 *  never see it. */
void *MQ_contextData(MQ_Context *context);

/** Stores one pointer for this plugin and this worker. The host never
 *  frees it: free it in mq_context_cleanup(). */
void MQ_setContextData(MQ_Context *context, void *data);

/** MailerQ's own libev loop. mq-host is not libev-based and returns NULL:
 *  use MQ_ioWatch() and MQ_startTimer(), which work in both hosts. */
struct ev_loop *MQ_ev(MQ_Context *context);

/** Calls `callback(watcher, fd, ready, data)` on this worker's loop while
 *  `fd` is ready for `events` (MQ_READ and/or MQ_WRITE), level-triggered,
 *  until MQ_ioUnwatch(). Several watchers may watch one fd. The fd stays
 *  the plugin's: the host never closes it. Unwatch before closing the fd;
 *  mq-host tolerates a closed (even reused) fd number, and unwatching a
 *  watcher whose fd was closed is a harmless no-op there. Returns NULL on
 *  failure. */
MQ_IOWatcher *MQ_ioWatch(MQ_Context *context, int fd, int events, MQ_IOCallback callback, void *data);

/** Stops and frees a watcher; it never fires again, also when called from
 *  inside its own callback. Call it once per watcher. */
void MQ_ioUnwatch(MQ_IOWatcher *watcher);

/** Starts a one-shot timer: `callback(data)` runs once on this worker's
 *  loop after `seconds` (0 = on the next loop turn, never inside the
 *  current call). A fired timer is freed by the host. Returns NULL on
 *  failure. mq-host runs a delay that is NaN or negative as 0 and one
 *  over 365 days (INFINITY too) as 365 days, and reports it (once per
 *  plugin, with its name; counted as `api_misuse`). */
MQ_Timer *MQ_startTimer(MQ_Context *context, float seconds, MQ_TimerCallback callback, void *data);

/** Cancels and frees a timer. Only before it fired: a fired timer's handle
 *  is gone (mq-host ignores and reports a stop or reset of a fired or
 *  stopped timer, and a second MQ_ioUnwatch()). */
void MQ_stopTimer(MQ_Timer *timer);

/** Restarts a timer to fire `seconds` from now. Only before it fired. */
void MQ_resetTimer(MQ_Timer *timer, float seconds);

/* ----------------------------------------------------------------------
 * Host functions: connection
 * -------------------------------------------------------------------- */

/** The connection's socket, for getpeername()/getsockname() only: never
 *  read, write, watch or close it (use MQ_send()). */
int MQ_fileDescriptor(MQ_Connection *connection);

/** Sends `size` raw bytes to the SMTP peer (write complete replies ending
 *  in "\r\n"). The host buffers them; returns the number of bytes
 *  accepted: in mq-host fewer than `size` once the connection's output
 *  limit is reached (a client that does not read its replies), and 0 for
 *  a NULL `buffer` with a non-zero size. In mq-host the bytes sent during
 *  an smtp_in_* hook are the reply to that command and replace the host's
 *  own; where no client can get them (smtp_in_close, the smtp_out_* hooks,
 *  no hook running) it returns 0 and the host logs why. */
size_t MQ_send(MQ_Connection *connection, const void *buffer, size_t size);

/** Whether the client is authenticated (after AUTH). */
bool MQ_authenticated(MQ_Connection *connection);

/** Accepts (true) or rejects (false) the client's AUTH credentials. A
 *  plugin that sets false after another set true makes the login fail. */
void MQ_setAuthenticated(MQ_Connection *connection, bool authenticated);

/** Whether the connection is TLS. */
bool MQ_secure(MQ_Connection *connection);

/** The pointer this plugin stored with MQ_setConnectionData() for this
 *  connection; NULL until set. Each plugin has its own slot. */
void *MQ_connectionData(MQ_Connection *connection);

/** Stores one pointer for this plugin and this connection. The host never
 *  frees it: free it in mq_smtp_in_close() (for incoming connections). */
void MQ_setConnectionData(MQ_Connection *connection, void *data);

/** Hands control back: go on with the next plugin. Call exactly once after
 *  a hook returned true, from the connection's worker loop. */
void MQ_continue(MQ_Connection *connection);

/** Hands control back: skip the remaining plugins for this step. Same rules
 *  as MQ_continue(). */
void MQ_complete(MQ_Connection *connection);

/** Hands control back: run this step again from the first plugin (earlier
 *  plugins run again; beware of loops — mq-host cuts a loop after a
 *  bound). Same rules as MQ_continue(). */
void MQ_retry(MQ_Connection *connection);

/* ----------------------------------------------------------------------
 * Host functions: message (a wrapper over MailerQ's JSON object)
 * -------------------------------------------------------------------- */

/** libfastjson's JSON value (`#include <libfastjson/json.h>`). */
struct fjson_object;

/** The message's JSON: a live libfastjson object, in MailerQ and in
 *  mq-host alike. Read and change it with libfastjson's functions
 *  (fjson_object_object_get_ex, fjson_object_object_add, ..._del, ...);
 *  the host links libfastjson, so a plugin may use the host's copy.
 *  The object belongs to the message: the same object on every call,
 *  freed with the message; never fjson_object_put() it. Changes are kept:
 *  on an incoming message they are what is stored (published), on an
 *  outgoing one what the result carries. On an incoming message
 *  MQ_setRecipient/MQ_setEnvelope/MQ_setMime change the object's
 *  `recipient`/`envelope`/`mime`, and changing those members changes
 *  what MQ_recipient/MQ_envelope/MQ_mime return; on an outgoing message
 *  the setters change only what goes over SMTP, never the object.
 *  mq-host: the `mime` member is a string of the MIME's exact bytes
 *  (fjson_object_get_string_len() for its length); replacing it replaces
 *  the MIME (outgoing: the MIME sent, unless a plugin called MQ_setMime),
 *  removing it removes the MIME. A value a plugin got from the object
 *  (fjson_object_object_get_ex) is owned by the object: take a reference
 *  (fjson_object_get) to keep it past a change. */
struct fjson_object *MQ_json(MQ_Message *message);

/** The envelope (MAIL FROM) address; read it with MQ_email() (NULL or ""
 *  for a bounce). */
MQ_Address *MQ_envelope(MQ_Message *message);

/** Replaces the envelope with `size` bytes at `envelope` (no NUL
 *  needed). */
void MQ_setEnvelope(MQ_Message *message, const char *envelope, size_t size);

/** The recipient (RCPT TO) address; may be NULL. */
const char *MQ_recipient(MQ_Message *message);

/** Replaces the recipient with `size` bytes at `recipient` (no NUL
 *  needed). */
void MQ_setRecipient(MQ_Message *message, const char *recipient, size_t size);

/** The full MIME message, NUL-terminated; may be NULL (no MIME in the
 *  message JSON).
 *  A C string: if the MIME itself holds a NUL byte, strlen() and every
 *  reader of the result stop there, and the bytes after it cannot be
 *  reached. MailerQ's API has no getter with a length, so a C plugin that
 *  reads the MIME and writes it back with MQ_setMime() drops everything
 *  after the first NUL byte; leave such a message's MIME alone (the
 *  mq_smtp_in_data hook does get the received bytes with their size).
 *  Rust plugins built with mq-plugin read every byte in mq-host. */
const char *MQ_mime(MQ_Message *message);

/** Replaces the MIME with `size` bytes at `mime` (no NUL needed; NUL
 *  bytes inside are kept).
 *  Incoming: changes the published JSON; outgoing: changes what is sent. */
void MQ_setMime(MQ_Message *message, const char *mime, size_t size);

/** Incoming only: whether the message goes to the local queue (true) or is
 *  relayed (false). mq-host also accepts a recipient's MQ_Address* here
 *  (its objects carry a type tag); use MQ_addressLocal() for that, which
 *  casts for you. */
bool MQ_local(MQ_Message *message);

/** Incoming only: sends the message to the local queue (true) or relays it
 *  (false). mq-host also accepts a recipient's MQ_Address* (see
 *  MQ_setAddressLocal()). */
void MQ_setLocal(MQ_Message *message, bool local);

/* ----------------------------------------------------------------------
 * Host functions: address
 * -------------------------------------------------------------------- */

/** The address as text, NUL-terminated; may be NULL (e.g. the empty
 *  envelope of a bounce). */
const char *MQ_email(MQ_Address *address);

/** MQ_local() on a recipient address (header-only sugar: a cast, no extra
 *  symbol). */
static inline bool MQ_addressLocal(MQ_Address *address)
{
    return MQ_local((MQ_Message *)(void *)address);
}

/** MQ_setLocal() on a recipient address (header-only sugar: a cast, no
 *  extra symbol). */
static inline void MQ_setAddressLocal(MQ_Address *address, bool local)
{
    MQ_setLocal((MQ_Message *)(void *)address, local);
}

#ifdef __cplusplus
}
#endif

#endif /* MAILERQ_H */
