/*
 * hostile.c — a C plugin that misuses the host's functions, for the
 * soundness suite. Its scenario is the first word of `<own path>.plan`:
 *
 *   thread-calls     smtp_in_message takes control and starts a thread that
 *                    calls message, connection and context functions on the
 *                    hook's handles (ROUNDS rounds of CALLS calls) while a
 *                    timer on the loop changes the message; when the thread
 *                    is done, the loop joins it and resumes.
 *   use-after-close  smtp_in_message and smtp_in_rcptto keep their handles;
 *                    smtp_in_close starts a timer whose callback uses the
 *                    connection, the message and the address after the
 *                    connection has closed (STALE_CALLS calls).
 *   garbage-handles  smtp_in_connect passes NULL, made-up values and handles
 *                    of the wrong kind (GARBAGE_CALLS calls).
 *
 * It logs `c-hostile <text>` lines.
 */
#include <mailerq.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROUNDS 50
#define CALLS 14
#define STALE_CALLS 7
#define GARBAGE_CALLS 6

static char scenario[64] = "none";

static void say(const char *text)
{
    char line[256];
    snprintf(line, sizeof line, "c-hostile %s", text);
    MQ_log(MQ_INFO, line);
}

int mq_version(void) { return MQ_API_VERSION; }

void mq_initialize(void)
{
    Dl_info info;
    if (!dladdr((void *)&scenario, &info) || !info.dli_fname) return;
    char path[4096];
    snprintf(path, sizeof path, "%s.plan", info.dli_fname);
    FILE *plan = fopen(path, "r");
    if (!plan) return;
    if (fscanf(plan, "%63s", scenario) != 1) strcpy(scenario, "none");
    fclose(plan);
}

static int is(const char *name) { return strcmp(scenario, name) == 0; }

/* ---- thread-calls ------------------------------------------------------ */

struct race {
    MQ_Context *context;
    MQ_Connection *connection;
    MQ_Message *message;
    pthread_t thread;
    atomic_int done;
    MQ_Timer *timer;
    int ticks;
};

static void ignore_timer(void *data) { (void)data; }

static void *race_thread(void *data)
{
    struct race *r = data;
    for (int i = 0; i < ROUNDS; i++) {
        (void)MQ_json(r->message);
        (void)MQ_mime(r->message);
        MQ_setMime(r->message, "from the thread", 15);
        (void)MQ_recipient(r->message);
        MQ_setRecipient(r->message, "thread@example.org", 18);
        (void)MQ_envelope(r->message);
        MQ_setEnvelope(r->message, "thread@example.org", 18);
        (void)MQ_local(r->message);
        MQ_setLocal(r->message, true);
        (void)MQ_connectionData(r->connection);
        MQ_setConnectionData(r->connection, r);
        (void)MQ_send(r->connection, "x", 1);
        (void)MQ_contextData(r->context);
        (void)MQ_startTimer(r->context, 0.0f, ignore_timer, NULL);
    }
    atomic_store(&r->done, 1);
    return NULL;
}

static void race_tick(void *data)
{
    struct race *r = data;
    /* The worker changes the message meanwhile (what used to race). */
    char mime[64];
    int n = snprintf(mime, sizeof mime, "Subject: tick %d\r\n\r\nfrom the loop\r\n", r->ticks++);
    MQ_setMime(r->message, mime, (size_t)n);
    (void)MQ_json(r->message);
    if (!atomic_load(&r->done)) {
        r->timer = MQ_startTimer(r->context, 0.001f, race_tick, r);
        return;
    }
    pthread_join(r->thread, NULL);
    MQ_Connection *connection = r->connection;
    free(r);
    say("the thread is done");
    MQ_continue(connection);
}

/* ---- use-after-close ----------------------------------------------------- */

static MQ_Message *kept_message;
static MQ_Address *kept_address;

static void after_close(void *data)
{
    MQ_Connection *connection = data;
    MQ_continue(connection);
    (void)MQ_send(connection, "after close\r\n", 13);
    (void)MQ_connectionData(connection);
    (void)MQ_authenticated(connection);
    MQ_setMime(kept_message, "after close", 11);
    (void)MQ_json(kept_message);
    (void)MQ_email(kept_address);
    say("used the closed connection's handles");
}

/* ---- hooks --------------------------------------------------------------- */

bool mq_smtp_in_connect(MQ_Context *context, MQ_Connection *connection)
{
    if (!is("garbage-handles")) return false;
    (void)MQ_send(NULL, "x", 1);
    (void)MQ_send((MQ_Connection *)(uintptr_t)0x1234, "x", 1);
    (void)MQ_email((MQ_Address *)connection);
    (void)MQ_json((MQ_Message *)context);
    (void)MQ_contextData((MQ_Context *)connection);
    MQ_continue((MQ_Connection *)(uintptr_t)~(uintptr_t)0);
    say("passed garbage handles");
    return false;
}

bool mq_smtp_in_rcptto(MQ_Context *context, MQ_Connection *connection, MQ_Address *address)
{
    (void)context;
    (void)connection;
    if (is("use-after-close")) kept_address = address;
    return false;
}

bool mq_smtp_in_message(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    if (is("use-after-close")) {
        kept_message = message;
        return false;
    }
    if (!is("thread-calls")) return false;
    struct race *r = calloc(1, sizeof *r);
    if (!r) return false;
    r->context = context;
    r->connection = connection;
    r->message = message;
    if (pthread_create(&r->thread, NULL, race_thread, r) != 0) {
        free(r);
        return false;
    }
    r->timer = MQ_startTimer(context, 0.001f, race_tick, r);
    return true;
}

bool mq_smtp_in_close(MQ_Context *context, MQ_Connection *connection)
{
    if (is("use-after-close")) MQ_startTimer(context, 0.05f, after_close, connection);
    return false;
}
