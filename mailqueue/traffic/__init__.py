"""Traffic from real mail logs: Postfix and Exim logs read into a traffic profile.

- :mod:`~mailqueue.traffic.sources` opens log files (plain, gzip, bzip2, xz), orders a
  rotated set oldest first and reads it line by line, counting bytes for a progress bar;
- :mod:`~mailqueue.traffic.stamps` turns log times into POSIX seconds: year-less syslog
  times (the year carried through a rotated set from its newest file), RFC 3339 times,
  Exim's local times; daylight saving's repeated hour, clock jumps counted;
- :mod:`~mailqueue.traffic.lines` says what a line is (a Postfix or Exim line, another
  program's, or not a log line at all);
- :mod:`~mailqueue.traffic.postfix` and :mod:`~mailqueue.traffic.exim` follow each message
  through its lines to one record: when it arrived, its size, its recipients' domains,
  its sender's domain;
- :mod:`~mailqueue.traffic.profile` is the profile itself (arrivals per interval, size and
  recipient histograms, domain mixes; counts and domains only, never an address) and
  its JSON file;
- :mod:`~mailqueue.traffic.reader` puts them together: logs in, profile out;
- :mod:`~mailqueue.traffic.show` and :mod:`~mailqueue.traffic.chart` describe a profile.

No message content is read: a log holds none.
"""
