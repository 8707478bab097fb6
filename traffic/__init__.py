"""Measurement of a testbed run against the resource manager's reservations (DESIGN.md "Measuring against
reservations").  ``traffic.measure.Measurement`` is what ``testbed.run`` drives; the files below are what it
writes into the run folder, for ``results/`` to read.  Times ``t`` are seconds since the resource manager's
epoch 0 began (its ``time.monotonic()`` at start-up, read over a StatusQuery), so epoch ``i`` is
``[i*L, (i+1)*L)`` with ``L = measurement.json:epoch_length``.  Bytes are bytes, rates bytes/s.

``epochs.jsonl`` -- one JSON object per line, one line per resource-manager epoch, in order::

    {"epoch": 3, "epochs": 1, "t_start": 3.0, "t_end": 4.0012, "partial": false,
     "links": {"trunk/T1": {"bytes": 1234567, "packets": 850, "qdisc_bytes": 1234567, "qdisc_packets": 850,
                            "drops": 0, "overlimits": 12, "requeues": 0, "backlog": 0}, ...}}

  - one entry per link direction of the topology that the testbed shapes (``EmulatedNetwork.links()``);
  - ``bytes``/``packets``: transmitted by the interface whose egress is that link direction, from
    ``/proc/<pid>/net/dev`` (bridge ports: the root namespace's) -- Ethernet frames: IP bytes + 14 per packet;
  - ``qdisc_*``, ``drops``, ``overlimits``, ``requeues``: the HTB class (and leaf) on that interface over
    rtnetlink, deltas over the epoch; ``backlog`` is the queue's bytes at the epoch's end (a level, not a delta);
  - ``epochs`` > 1 when samples were missed (one line then covers that many epochs, from ``epoch`` on);
    ``partial`` marks the last line (the run stopped inside that epoch; ``t_end`` says where); ``t_end`` is
    when the sample was actually taken (a few ms after the boundary; lateness in measurement.json).
  - Comparing with the ledger (``reserved_bytes`` per (epoch, link), block payload bytes): the wire adds
    TCP/IP/Ethernet headers, about 4.6 % for full 1448-byte segments; flows.json's ``per_epoch`` gives the
    trunks' data bytes as IP bytes and as TCP payload.

``capture/<trunk>.pcap`` -- tcpdump -s 96 on the start router's trunk interface (both directions);
``capture/<trunk>.tcpdump.txt`` its stderr (the "dropped by kernel" line).

``flows.json``::

    {"trunks": {"T1": {
        "link": "trunk/T1",
        "capture_drops": 0,                  # tcpdump's "packets dropped by kernel"; null = unknown
        "captured_packets": 23456,
        "primary_bytes": ...,                # IP bytes seen leaving in the primary direction
        "data_bytes": ..., "data_payload_bytes": ...,  # of those, the transfers' data packets (IP / TCP payload)
        "reserved_bytes": ...,               # ledger grant + carry bytes on trunk/T1, all transfers
        "unreserved_bytes": 1234,            # primary-direction IP bytes belonging to no transfer
        "unreserved": {"cross": .., "tcp": .., "udp": .., "other": ..},  # "cross": declared cross traffic
        "transfer_acks_on_primary": 0,       # a transfer's answering direction seen on the primary (not expected)
        "cross": [{"link", "src", "dst", "dport", "primary_bytes", "reverse_bytes", "packets", "first_t", "last_t"}],
        "reverse_bytes": .., "reverse": {"transfer": .., "other": ..},  # ACKs/requests of transfers, control
        "transfers": 42,
        "reserved_transfers_not_seen": [...], "reserved_transfers_not_seen_count": 0,
        "unmatched_tcp": ["src:port > dst:port", ...],   # largest unmatched TCP 4-tuples on the primary
        "per_epoch": {"3": {"data_bytes", "data_payload_bytes", "unreserved_bytes", "cross_bytes",
                            "reverse_bytes"}},
        "flows": [{"transfer_id", "src", "sport", "dst", "dport", "bytes" (IP), "packets", "payload_bytes",
                   "first_t", "last_t", "reserved_bytes_on_this_trunk", "in_ledger", "source", "destination",
                   "fileset", "file_id", "block", "reverse_bytes"}]}},
     "flow_lines": 321, "flow_conflicts": [], "ledger_transfers": 300, "cpu_s": 0.4}

``crossload.json`` (only when the scenario declares ``cross_traffic``)::

    {"loads": [{"index": 0, "link": "trunk/T1", "rate_bytes_per_s": 500000.0, "start": 5.0, "duration": 20.0,
                "src": "172.30.0.1", "dst": "172.30.0.2", "dport": 7200, "proto": "udp", "started": true,
                "send": {"ip_bytes", "packets", "send_errors", "datagram_ip_bytes", "t_start", "t_end",
                         "rate_achieved"},
                "sink": {"ip_bytes", "packets"}, "cpu_s": 0.3, "error": ""}]}

``measurement.json``::

    {"cpu_s": 1.23,                          # everything the measurement ran: threads, tcpdump, senders, analysis
     "cpu": {"sampler_s", "capture_s", "crossload_s", "origin_query_s", "setup_s", "stop_s", "postprocess_s",
             "flows_analysis_s"},
     "epoch_origin": {"source", "epoch", "epoch_start", "epoch_length", "asked_at", "tries"},
     "epoch_length": 1.0, "wall_minus_monotonic": ...,
     "sampler": {"cpu_s", "samples", "records", "ports", "namespaces", "sample_cpu_ms_mean", "sample_cpu_ms_max",
                 "lateness_ms_p50", "lateness_ms_max", "origin_source", "errors"},
     "capture": {"T1": {"pcap", "intf", "captured", "received_by_filter", "dropped_by_kernel", "cpu_s", "error"}},
     "crossload": [...], "files": {...}, "errors": [...]}
"""
