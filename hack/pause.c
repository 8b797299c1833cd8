/* The pod sandbox ("pause") container of the test cluster's real node: it holds the pod's
 * namespaces, reaps zombies and exits at once on SIGTERM or SIGINT. Nothing can be pulled here,
 * so hack/images.sh builds it statically and puts it in an image of its own. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  signal(SIGTERM, stop);
  signal(SIGINT, stop);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
