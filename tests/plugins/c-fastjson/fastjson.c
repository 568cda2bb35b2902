/*
 * A MailerQ plugin written from MailerQ's public plugin documentation only:
 * the MQ_* functions it calls are declared here as the documentation
 * shows them (no mailerq.h), and the message JSON is handled with
 * libfastjson, whose `struct fjson_object` MQ_json() returns.
 *
 * Every check logs "fastjson ok <name>" or "fastjson fail <name> ..."
 * through MQ_log; other lines start with "fastjson ".
 *
 * smtp_in_message: reads `recipient`, adds `fastjson-in` (an object),
 *   adds `checked-by` inside `connection` (if that is an object), replaces
 *   `x-change`, removes `x-remove`, calls MQ_setRecipient and checks that
 *   the object follows, sets `envelope` through the object and checks
 *   MQ_envelope, and prepends a header to the MIME through the object's
 *   `mime` string.
 * smtp_out_data: reads `recipient`, checks that MQ_mime() is NULL (no
 *   plugin set the MIME yet), adds `fastjson-out`, then makes the MIME to
 *   send from the JSON's `mime` with MQ_setMime.
 */
#include <libfastjson/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The API version this plugin is built for: in real use it comes from the
 * MailerQ installation; mq-host's default is 1. */
#ifndef MQ_API_VERSION
#define MQ_API_VERSION 1
#endif

#define MQ_CRIT 1
#define MQ_WARN 2
#define MQ_INFO 3

#define EXPORT __attribute__((visibility("default")))

typedef struct MQ_Context MQ_Context;
typedef struct MQ_Connection MQ_Connection;
typedef struct MQ_Message MQ_Message;
typedef struct MQ_Address MQ_Address;

void MQ_log(int priority, const char *message);
struct fjson_object *MQ_json(MQ_Message *message);
MQ_Address *MQ_envelope(MQ_Message *message);
const char *MQ_email(MQ_Address *address);
const char *MQ_recipient(MQ_Message *message);
void MQ_setRecipient(MQ_Message *message, const char *recipient, size_t size);
const char *MQ_mime(MQ_Message *message);
void MQ_setMime(MQ_Message *message, const char *mime, size_t size);

static void say(const char *format, ...)
{
    char line[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof line, format, args);
    va_end(args);
    char prefixed[1100];
    snprintf(prefixed, sizeof prefixed, "fastjson %s", line);
    MQ_log(MQ_INFO, prefixed);
}

static void check(bool ok, const char *name, const char *detail)
{
    if (ok)
        say("ok %s", name);
    else
        say("fail %s %s", name, detail ? detail : "");
}

/* The string member `key` of `json`, or NULL. Owned by the object. */
static const char *member(struct fjson_object *json, const char *key)
{
    struct fjson_object *value = NULL;
    if (!fjson_object_object_get_ex(json, key, &value) || !value)
        return NULL;
    if (!fjson_object_is_type(value, fjson_type_string))
        return NULL;
    return fjson_object_get_string(value);
}

/* `header` followed by the string member `mime` of `json` (every byte);
 * malloc'ed, its length in *size. */
static char *with_header(struct fjson_object *json, const char *header, size_t *size)
{
    struct fjson_object *mime = NULL;
    const char *text = "";
    size_t len = 0;
    if (fjson_object_object_get_ex(json, "mime", &mime) && mime &&
        fjson_object_is_type(mime, fjson_type_string)) {
        text = fjson_object_get_string(mime);
        len = (size_t)fjson_object_get_string_len(mime);
    }
    size_t head = strlen(header);
    char *out = malloc(head + len + 1);
    if (!out)
        return NULL;
    memcpy(out, header, head);
    memcpy(out + head, text, len);
    out[head + len] = '\0';
    *size = head + len;
    return out;
}

EXPORT int mq_version(void)
{
    return MQ_API_VERSION;
}

EXPORT bool mq_smtp_in_message(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    (void)context;
    (void)connection;
    struct fjson_object *json = MQ_json(message);
    if (!json) {
        check(false, "in-json", "MQ_json returned NULL");
        return false;
    }
    check(MQ_json(message) == json, "in-same-object", "a second call gave another object");

    const char *found = member(json, "recipient");
    char recipient[256];
    snprintf(recipient, sizeof recipient, "%s", found ? found : "");
    say("in recipient %s", recipient);
    const char *via_api = MQ_recipient(message);
    check(via_api && strcmp(via_api, recipient) == 0, "in-recipient-alias", via_api);

    struct fjson_object *seen = fjson_object_new_object();
    fjson_object_object_add(seen, "recipient", fjson_object_new_string(recipient));
    fjson_object_object_add(seen, "hook", fjson_object_new_string("smtp_in_message"));
    fjson_object_object_add(json, "fastjson-in", seen);

    struct fjson_object *connection_info = NULL;
    if (fjson_object_object_get_ex(json, "connection", &connection_info) && connection_info &&
        fjson_object_is_type(connection_info, fjson_type_object))
        fjson_object_object_add(connection_info, "checked-by", fjson_object_new_string("c-fastjson"));
    if (fjson_object_object_get_ex(json, "x-change", NULL))
        fjson_object_object_add(json, "x-change", fjson_object_new_string("changed"));
    fjson_object_object_del(json, "x-remove");

    /* MQ_setRecipient on an incoming message sets the JSON's recipient. */
    char changed[300];
    snprintf(changed, sizeof changed, "fastjson.%s", recipient);
    MQ_setRecipient(message, changed, strlen(changed));
    const char *now = member(json, "recipient");
    check(now && strcmp(now, changed) == 0, "in-recipient-synced", now);

    /* ... and the JSON's envelope is what MQ_envelope reads. */
    fjson_object_object_add(json, "envelope", fjson_object_new_string("json-envelope@example.org"));
    MQ_Address *envelope = MQ_envelope(message);
    const char *email = envelope ? MQ_email(envelope) : NULL;
    check(email && strcmp(email, "json-envelope@example.org") == 0, "in-envelope-from-json", email);

    /* The MIME is the JSON's `mime`: change it through the object. */
    const char *before = MQ_mime(message);
    const char *as_json = member(json, "mime");
    check(before && as_json && strcmp(before, as_json) == 0, "in-mime-alias", before);
    size_t size = 0;
    char *mime = with_header(json, "X-Fastjson: in\r\n", &size);
    if (mime) {
        fjson_object_object_add(json, "mime", fjson_object_new_string_len(mime, (int)size));
        const char *after = MQ_mime(message);
        check(after && strcmp(after, mime) == 0, "in-mime-from-json", after);
        free(mime);
    }
    return false;
}

EXPORT bool mq_smtp_out_data(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    (void)context;
    (void)connection;
    struct fjson_object *json = MQ_json(message);
    if (!json) {
        check(false, "out-json", "MQ_json returned NULL");
        return false;
    }
    const char *found = member(json, "recipient");
    say("out recipient %s", found ? found : "(none)");
    check(MQ_mime(message) == NULL, "out-mime-null", "MQ_mime was set before any plugin set it");

    struct fjson_object *seen = fjson_object_new_object();
    fjson_object_object_add(seen, "recipient", fjson_object_new_string(found ? found : ""));
    fjson_object_object_add(seen, "hook", fjson_object_new_string("smtp_out_data"));
    fjson_object_object_add(json, "fastjson-out", seen);

    /* Make the MIME to send from the JSON, as the out_data page describes. */
    size_t size = 0;
    char *mime = with_header(json, "X-Fastjson: out\r\n", &size);
    if (mime) {
        MQ_setMime(message, mime, size);
        const char *now = MQ_mime(message);
        check(now && strcmp(now, mime) == 0, "out-mime-set", now);
        free(mime);
    }
    return false;
}
