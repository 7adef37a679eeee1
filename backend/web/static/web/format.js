/* Numbers for people: sizes in binary units, durations, and speed with time left. */

export function formatBytes(bytes) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

export function formatSeconds(seconds) {
  if (seconds < 60) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** Speed and time left from the byte counts seen over the last few seconds. */
export class Rate {
  constructor() {
    this.samples = [];
  }

  add(bytes) {
    const now = performance.now();
    const last = this.samples[this.samples.length - 1];
    if (last && bytes < last.bytes) this.samples = []; // a new transfer (retried after a cancel)
    this.samples.push({ at: now, bytes });
    while (this.samples.length > 2 && now - this.samples[0].at > 10000) this.samples.shift();
  }

  describe(done, total) {
    const first = this.samples[0];
    const last = this.samples[this.samples.length - 1];
    if (!first || last.at - first.at < 300 || last.bytes === first.bytes) return "";
    const perSecond = ((last.bytes - first.bytes) * 1000) / (last.at - first.at);
    return ` · ${formatBytes(perSecond)}/s · about ${formatSeconds((total - done) / perSecond)} left`;
  }
}
