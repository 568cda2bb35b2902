/*
 * out_socket.c: a MailerQ plugin that reads the delivery connection's
 * socket. MailerQ documents MQ_fileDescriptor as the socket of the SMTP
 * connection, to be used only to learn about it (getsockname,
 * getpeername); this plugin does just that in smtp_out_data and
 * smtp_out_sent and logs one line each:
 *
 *   out-socket <hook> fd <n> local <ip> <port> peer <ip> <port>
 *   out-socket <hook> fd <n> not a socket: <error>
 */
#include <mailerq.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int mq_version(void) { return MQ_API_VERSION; }

/* "ip port" of an IPv4 or IPv6 socket address into buf. */
static void describe(const struct sockaddr_storage *addr, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        port = ntohs(in->sin_port);
    } else if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        port = ntohs(in6->sin6_port);
    }
    snprintf(buf, size, "%s %u", ip, port);
}

static void log_socket(const char *hook, MQ_Connection *connection)
{
    int fd = MQ_fileDescriptor(connection);
    struct sockaddr_storage local, peer;
    socklen_t local_size = sizeof local, peer_size = sizeof peer;
    char line[256];
    if (getsockname(fd, (struct sockaddr *)&local, &local_size) != 0 ||
        getpeername(fd, (struct sockaddr *)&peer, &peer_size) != 0) {
        snprintf(line, sizeof line, "out-socket %s fd %d not a socket: %s", hook, fd,
                 strerror(errno));
    } else {
        char here[80], there[80];
        describe(&local, here, sizeof here);
        describe(&peer, there, sizeof there);
        snprintf(line, sizeof line, "out-socket %s fd %d local %s peer %s", hook, fd, here, there);
    }
    MQ_log(MQ_INFO, line);
}

bool mq_smtp_out_data(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    (void)context;
    (void)message;
    log_socket("smtp_out_data", connection);
    return false;
}

bool mq_smtp_out_sent(MQ_Context *context, MQ_Connection *connection, MQ_Message *message)
{
    (void)context;
    (void)message;
    log_socket("smtp_out_sent", connection);
    return false;
}
