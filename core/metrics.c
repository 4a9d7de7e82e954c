// SPDX-License-Identifier: MIT
#include "metrics.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bpf_host.h"
#include "proc.h"
#include "sideband.h"
#include "strbuf.h"
#include "symbolize.h"

static void family(struct sonde_strbuf *out, const char *name, const char *type, const char *help)
{
	sonde_strbuf__printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct sonde_strbuf *out, const char *name, const char *help, uint64_t v)
{
	family(out, name, "counter", help);
	sonde_strbuf__printf(out, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(struct sonde_strbuf *out, const char *name, const char *help, double v)
{
	family(out, name, "gauge", help);
	sonde_strbuf__printf(out, "%s %.17g\n", name, v);
}

static void bpf_metrics(const struct sonde_bpf_host *host, struct sonde_strbuf *out)
{
	uint64_t s[SONDE_STAT__COUNT];

	if (sonde_bpf_host__stats(host, s))
		return;
	counter(out, "sonde_samples_total", "CPU samples taken by the BPF sampler (idle excluded).",
		s[SONDE_STAT_SAMPLES]);
	counter(out, "sonde_samples_idle_total", "CPU samples that found the CPU idle.",
		s[SONDE_STAT_SAMPLES_IDLE]);
	counter(out, "sonde_samples_not_profiled_total",
		"CPU samples of processes the script does not profile, dropped in the kernel.",
		s[SONDE_STAT_SAMPLES_SKIPPED]);
	family(out, "sonde_samples_dropped_total", "counter",
	       "Samples lost before userspace saw them, by reason.");
	sonde_strbuf__printf(out, "sonde_samples_dropped_total{reason=\"%s\"} %llu\n",
			     sonde_stat_name(SONDE_STAT_RINGBUF_DROPS),
			     (unsigned long long)s[SONDE_STAT_RINGBUF_DROPS]);
	sonde_strbuf__printf(out, "sonde_samples_dropped_total{reason=\"%s\"} %llu\n",
			     sonde_stat_name(SONDE_STAT_SCRATCH_MISSING),
			     (unsigned long long)s[SONDE_STAT_SCRATCH_MISSING]);
	family(out, "sonde_stacks_truncated_total", "counter",
	       "Stacks cut at the frame limit, by part (kernel, user).");
	sonde_strbuf__printf(out, "sonde_stacks_truncated_total{stack=\"kernel\"} %llu\n",
			     (unsigned long long)s[SONDE_STAT_KSTACK_TRUNCATED]);
	sonde_strbuf__printf(out, "sonde_stacks_truncated_total{stack=\"user\"} %llu\n",
			     (unsigned long long)s[SONDE_STAT_USTACK_TRUNCATED]);
	family(out, "sonde_stack_errors_total", "counter",
	       "Stacks that could not be read at all, by part (kernel, user).");
	sonde_strbuf__printf(out, "sonde_stack_errors_total{stack=\"kernel\"} %llu\n",
			     (unsigned long long)s[SONDE_STAT_KSTACK_ERRORS]);
	sonde_strbuf__printf(out, "sonde_stack_errors_total{stack=\"user\"} %llu\n",
			     (unsigned long long)s[SONDE_STAT_USTACK_ERRORS]);
	counter(out, "sonde_unwinder_missing_total",
		"Samples whose unwinder slot was empty (frame pointers used instead).",
		s[SONDE_STAT_TAIL_CALL_FAILED]);
	counter(out, "sonde_proc_events_dropped_total",
		"Process exec/fork/exit events lost: ringbuf full.", s[SONDE_STAT_PROC_EVENT_DROPS]);
	gauge(out, "sonde_sampled_cpus", "CPUs the sampler is attached to.",
	      sonde_bpf_host__cpus(host));
}

static void daemon_metrics(const struct sonde_daemon_counters *c, struct sonde_strbuf *out)
{
	counter(out, "sonde_samples_received_total", "Samples read from the ringbuf.",
		c->samples_received);
	counter(out, "sonde_samples_unknown_process_total",
		"Samples of a process neither known nor in /proc (kept, without metadata).",
		c->samples_unknown_process);
	counter(out, "sonde_samples_lost_memory_total", "Samples not aggregated: out of memory.",
		c->samples_lost_memory);
	counter(out, "sonde_frames_unmapped_total",
		"User frames no known mapping covered (kept as [unknown]+address).",
		c->frames_unmapped);
	gauge(out, "sonde_samples_tag_waiting",
	      "Samples held until the plugin that tagged their thread names the tag.",
	      (double)c->samples_tag_waiting);
	sonde_strbuf__printf(out,
			     "# HELP sonde_samples_tag_unlabeled_total Tagged samples kept without "
			     "their tag's labels, by reason.\n"
			     "# TYPE sonde_samples_tag_unlabeled_total counter\n"
			     "sonde_samples_tag_unlabeled_total{reason=\"late\"} %llu\n"
			     "sonde_samples_tag_unlabeled_total{reason=\"unknown\"} %llu\n"
			     "sonde_samples_tag_unlabeled_total{reason=\"full\"} %llu\n",
			     (unsigned long long)c->samples_tag_late,
			     (unsigned long long)c->samples_tag_unknown,
			     (unsigned long long)c->samples_tag_full);
	counter(out, "sonde_malformed_records_total", "Ringbuf records too short or of no known type.",
		c->records_malformed);
	counter(out, "sonde_windows_written_total", "Profile windows written to --output.",
		c->windows_written);
	counter(out, "sonde_window_write_errors_total", "Profile windows that could not be written.",
		c->window_write_errors);
}

/* process_* metrics, as every Prometheus client library exports them. */
static void process_metrics(struct sonde_strbuf *out)
{
	unsigned long long utime = 0, stime = 0, start = 0;
	long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	unsigned long pages_total = 0, pages_rss = 0;
	char buf[1024], *p;
	FILE *f;

	f = fopen("/proc/self/stat", "re");
	if (f) {
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);

		buf[n] = '\0';
		fclose(f);
		p = strrchr(buf, ')'); /* comm may hold spaces */
		if (p && sscanf(p + 2,
				"%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d "
				"%*d %*d %*d %llu",
				&utime, &stime, &start) == 3) {
			gauge(out, "process_cpu_seconds_total", "User and system CPU time of sonded.",
			      (double)(utime + stime) / (double)ticks);
		}
	}
	f = fopen("/proc/self/statm", "re");
	if (f) {
		if (fscanf(f, "%lu %lu", &pages_total, &pages_rss) == 2) {
			gauge(out, "process_resident_memory_bytes", "Resident memory of sonded.",
			      (double)pages_rss * (double)page);
			gauge(out, "process_virtual_memory_bytes", "Virtual memory of sonded.",
			      (double)pages_total * (double)page);
		}
		fclose(f);
	}
}

void sonde_metrics_write(const struct sonde_metrics_sources *src, struct sonde_strbuf *out)
{
	family(out, "sonde_build_info", "gauge", "sonded's version.");
	sonde_strbuf__printf(out, "sonde_build_info{version=\"%s\"} 1\n", SONDE_VERSION);
	if (src->host)
		bpf_metrics(src->host, out);
	if (src->counters)
		daemon_metrics(src->counters, out);
	if (src->sym) {
		struct sonde_symbolizer_stats s;

		sonde_symbolizer__stats(src->sym, &s);
		gauge(out, "sonde_symbol_objects", "Object files known to the symbolizer.",
		      (double)s.objects);
		counter(out, "sonde_symbol_lookups_total", "Addresses looked up by the symbolizer.",
			s.lookups);
		counter(out, "sonde_symbol_misses_total",
			"Lookups no symbol covered (named module+0xoffset instead).", s.misses);
		counter(out, "sonde_symbol_elf_errors_total", "Files that could not be read as ELF.",
			s.elf_errors);
	}
	if (src->procs) {
		struct sonde_procs_stats s;

		sonde_procs__stats(src->procs, &s);
		gauge(out, "sonde_processes", "Processes known, exited ones in their grace period included.",
		      (double)s.processes);
		counter(out, "sonde_proc_scans_total", "Reads of /proc/PID/maps.", s.scans);
		counter(out, "sonde_unknown_pids_total", "Samples of pids no longer in /proc.",
			s.unknown_pids);
		counter(out, "sonde_unmapped_addresses_total",
			"Addresses no mapping covered, even after a rescan.", s.unmapped_addrs);
	}
	if (src->sideband)
		counter(out, "sonde_sideband_lost_total",
			"perf side-band records the kernel lost (mmap/exec/fork).",
			sonde_sideband__lost(src->sideband));
	process_metrics(out);
}
