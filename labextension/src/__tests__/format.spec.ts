import {
  formatCount,
  formatElapsed,
  formatMemory,
  formatSize,
  formatWalltime,
  jobElapsed,
  parseMemory,
  parseWalltime
} from '../format';

describe('formatSize', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [10 * 1024 * 1024, '10 MiB'],
    [5 * 1024 ** 3, '5.0 GiB'],
    [1.25 * 1024 ** 4, '1.3 TiB'],
    [-1, '–'],
    [NaN, '–'],
    [null, '–'],
    [undefined, '–']
  ])('%p → %p', (bytes, text) => {
    expect(formatSize(bytes as number)).toBe(text);
  });
});

describe('formatCount', () => {
  it('pluralises', () => {
    expect(formatCount(1)).toBe('1 file');
    expect(formatCount(0)).toBe('0 files');
    expect(formatCount(476)).toBe('476 files');
    expect(formatCount(undefined)).toBe('');
  });
});

describe('formatElapsed', () => {
  it.each([
    [0, '0s'],
    [42.9, '42s'],
    [65, '1m 05s'],
    [3599, '59m 59s'],
    [3600 + 7 * 60, '1h 07m'],
    [3 * 86400 + 4 * 3600, '3d 04h'],
    [-5, '–']
  ])('%p s → %p', (s, text) => {
    expect(formatElapsed(s)).toBe(text);
  });
});

describe('walltime', () => {
  it('formats seconds as Slurm walltime', () => {
    expect(formatWalltime(3600)).toBe('1:00:00');
    expect(formatWalltime(90)).toBe('0:01:30');
    expect(formatWalltime(86400 + 3661)).toBe('1-01:01:01');
  });
  it.each([
    ['1:00:00', 3600],
    ['0:30:00', 1800],
    ['10:00', 600],
    ['45', 45 * 60],
    ['2-00:00:00', 172800],
    ['1-12', 129600],
    [' 1:00:00 ', 3600],
    [7200, 7200]
  ])('parses %p', (text, seconds) => {
    expect(parseWalltime(text)).toBe(seconds);
  });
  it.each(['', 'abc', '1:60:00', '1:00:60', '-1', '1.5:00', '1-24:00:00', 'one hour', 1.5, -3])('rejects %p', text => {
    expect(parseWalltime(text as string)).toBeNull();
  });
  it('round-trips', () => {
    for (const s of [1, 59, 3600, 86399, 86400, 200000]) {
      expect(parseWalltime(formatWalltime(s))).toBe(s);
    }
  });
});

describe('memory', () => {
  it.each([
    ['4G', 4 * 1024 ** 3],
    ['4g', 4 * 1024 ** 3],
    ['512M', 512 * 1024 ** 2],
    ['2GiB', 2 * 1024 ** 3],
    ['1.5 GB', 1.5 * 1024 ** 3],
    ['1024', 1024],
    [2048, 2048]
  ])('parses %p', (text, bytes) => {
    expect(parseMemory(text)).toBe(bytes);
  });
  it.each(['', '0', '0G', 'G', '4X', '-1G', 'lots', 1.5, 0])('rejects %p', text => {
    expect(parseMemory(text as string)).toBeNull();
  });
  it('formats bytes back as the largest exact unit', () => {
    expect(formatMemory(2 * 1024 ** 3)).toBe('2G');
    expect(formatMemory(1536 * 1024 ** 2)).toBe('1536M');
    expect(formatMemory(1000)).toBe('1000');
    expect(parseMemory(formatMemory(32 * 1024 ** 3))).toBe(32 * 1024 ** 3);
  });
});

describe('jobElapsed', () => {
  const t0 = Date.parse('2026-11-23T10:00:00Z');
  it('counts from start to now while running', () => {
    const job = { created: '2026-11-23T09:59:00Z', started: '2026-11-23T10:00:00Z', ended: null };
    expect(jobElapsed(job, t0 + 65_000)).toBe(65);
  });
  it('counts from creation while waiting', () => {
    const job = { created: '2026-11-23T10:00:00Z', started: null, ended: null };
    expect(jobElapsed(job, t0 + 5_000)).toBe(5);
  });
  it('stops at the end', () => {
    const job = { created: '2026-11-23T09:00:00Z', started: '2026-11-23T10:00:00Z', ended: '2026-11-23T10:02:00Z' };
    expect(jobElapsed(job, t0 + 10 ** 9)).toBe(120);
  });
  it('is 0 for a record without times', () => {
    expect(jobElapsed({ created: '', started: null, ended: null })).toBe(0);
  });
});
