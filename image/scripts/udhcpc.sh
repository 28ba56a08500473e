#!/bin/sh
# udhcpc hook: apply the lease and record it for godwit (which shows it on the console).
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    : > /run/resolv.conf.dhcp
    for d in $dns; do echo "nameserver $d" >> /run/resolv.conf.dhcp; done
    [ -f /run/godwit-static-dns ] || cp /run/resolv.conf.dhcp /etc/resolv.conf
    for n in $ntpsrv; do echo "$n" >> /run/ntp.dhcp; done
    ;;
esac
exit 0
