//! # godwit-netcheck
//!
//! Prerequisite checks: NTP, DNS, ICMP, TCP, TLS and proxy reachability with remediation text.
