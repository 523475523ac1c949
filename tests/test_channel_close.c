/* channel_close (runtime/channel.h): a rank's last lines reach the launcher
 * even when the launcher's pings are still unread in the rank's socket.
 * close(2) alone resets such a connection, which the launcher reads as
 * ECONNRESET (and a reset may drop lines not yet transmitted): a finished
 * rank was taken for a crash. Over TCP on loopback, as the real channel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "channel.h"

/* A connected TCP pair on 127.0.0.1: *launcher and *rank. */
static void tcp_pair(int *launcher, int *rank)
{
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof(address);
    assert_int_equal(bind(listener, (struct sockaddr *)&address, sizeof(address)), 0);
    assert_int_equal(listen(listener, 1), 0);
    assert_int_equal(getsockname(listener, (struct sockaddr *)&address, &length), 0);
    *rank = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(*rank, (struct sockaddr *)&address, sizeof(address)), 0);
    *launcher = accept(listener, NULL, NULL);
    assert_true(*launcher >= 0);
    close(listener);
}

static void *close_channel(void *channel)
{
    channel_close(channel);
    return NULL;
}

static void test_last_lines_arrive_and_the_connection_ends_cleanly(void **state)
{
    (void)state;
    int launcher, rank;
    tcp_pair(&launcher, &rank);
    Channel channel = {.fd = rank};
    const char ping[] = "ping\n";
    for (int i = 0; i < 3; i++) /* never read by the rank */
        assert_int_equal(send(launcher, ping, sizeof(ping) - 1, 0), (ssize_t)sizeof(ping) - 1);
    usleep(50 * 1000); /* the pings are in the rank's socket */
    channel_send(&channel, "done 0 0");
    pthread_t closer;
    assert_int_equal(pthread_create(&closer, NULL, close_channel, &channel), 0);
    char got[64] = {0};
    size_t have = 0;
    ssize_t n;
    while ((n = recv(launcher, got + have, sizeof(got) - 1 - have, 0)) > 0)
        have += (size_t)n;
    int error = n < 0 ? errno : 0;
    close(launcher); /* as the launcher does at the end of a connection */
    pthread_join(closer, NULL);
    assert_string_equal(got, "done 0 0\n");
    assert_int_equal(n, 0); /* the end of the stream, not a reset */
    assert_int_equal(error, 0);
    assert_int_equal(channel.fd, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_last_lines_arrive_and_the_connection_ends_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
