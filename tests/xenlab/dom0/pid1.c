/*
 * PID 1 of the xenlab dom0 (installed as /sbin/xenlab-pid1).
 *
 * The scenario script, /sbin/xenlab-init, used to be PID 1 itself. PID 1
 * inherits every orphan of the system (xl's domain monitors, the children
 * of libxl's hot-plug scripts), and bash reaping those from its SIGCHLD
 * handler corrupted its heap: runs ended with "malloc(): unsorted double
 * linked list corrupted" from a command substitution and the script hung
 * until the host's timeout. Here PID 1 only starts the script, reaps every
 * process that ends, and powers off when the script is gone.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/reboot.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
	pid_t script = fork();

	if (script == 0) {
		execl("/bin/bash", "bash", "/sbin/xenlab-init", (char *)NULL);
		perror("xenlab-pid1: exec /sbin/xenlab-init");
		_exit(127);
	}
	if (script < 0) {
		perror("xenlab-pid1: fork");
	} else {
		for (;;) {
			int status;
			pid_t pid = wait(&status);

			if (pid == script) {
				if (WIFSIGNALED(status))
					fprintf(stderr, "XENLAB xenlab-init killed by signal %d\n",
					    WTERMSIG(status));
				else if (WEXITSTATUS(status) != 0)
					fprintf(stderr, "XENLAB xenlab-init exited with %d\n",
					    WEXITSTATUS(status));
				break;
			}
			if (pid < 0 && errno != EINTR)
				break;
		}
	}
	/* The script powers off itself; this is for when it could not. */
	sync();
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}
