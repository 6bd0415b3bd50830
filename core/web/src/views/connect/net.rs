//! Verifying a guest address before a relay uses it: the one implementation is
//! [`sync::discovery`] (ping / TCP, then the ARP MAC; never an address the dial rule refuses).

pub use sync::discovery::{
    IpCheck, MacCheck, VerifyConfig, VerifyScope, arp_mac, in_scope, is_documentation, is_on_link,
    parse_on_link_routes, ping, tcp_probe, verify, verify_dialable,
};
