# SPDX-License-Identifier: AGPL-3.0-or-later
# This file imports and subclasses fakepve (PyPI, AGPL-3.0); it is a test-time tool, never shipped with proxlab.
"""Run one fake Proxmox VE cluster (fakepve 0.5.0) plus a loopback control endpoint.

Started by core/testkit (FakeCluster::start); not meant to be run by hand, but it can be:

    python sim.py --guests lab-cluster.json --host 127.0.0.11 --cert c.crt --key c.key

The PVE API is served over HTTPS on --host:--port (default 8006). A small
plain-HTTP JSON control API listens on --host:--control-port (default 8007) so a
test suite in another process can change the fake's state (faults, locks,
agents, volumes) without Python. Both refuse any address outside 127.0.0.0/8.

A file-based storage of the guests file that has "local_dir" (or env
PVE_SIM_STORAGE_DIR_<NAME>) is backed by a real directory: its images/ and iso
content are the files under <local_dir>/images/<vmid>/ and <local_dir>/template/iso/.

Parent watchdog (used by core/testkit): with env PVE_SIM_PARENT_PID set, the sim exits by itself once that
process is gone (polled every 0.5 s, PID reuse detected by start time), and then also removes the folders
named by env PVE_SIM_CLEANUP_DIR (os.pathsep-separated), if set. A test process that is killed, or whose static cluster is never dropped, leaves nothing running.
"""

import argparse
import asyncio
import contextvars
import ipaddress
import json
import os
import re
import signal
import struct
import sys
import time

from aiohttp import web

from fakepve import FakePve
from fakepve.model import PveError
from fakepve.qemu import volume_ref
from fakepve.storage import INTERNAL, _bytes, _is_file, parse_name_dir

EXPECTED_VERSION = '0.5.0'
DRIVE_KEYS = ('ide', 'sata', 'scsi', 'virtio')


def loopback(host):
    try:
        return ipaddress.ip_address(host).version == 4 and ipaddress.ip_address(host) in \
            ipaddress.ip_network('127.0.0.0/8')
    except ValueError:
        return False


def agent_enabled(config):
    """True if the config's agent option is on ('1', 1, 'enabled=1,...', '1,fstrim_cloned_disks=1')."""
    first = str(config.get('agent', '0')).split(',')[0]
    return first.split('=')[-1] in ('1', 'true', 'yes', 'on')


def mac_of(config):
    """The MAC of net0 (model=MAC or macaddr=MAC), lower case, or a made-up one."""
    for part in str(config.get('net0', '')).split(','):
        key, _, val = part.partition('=')
        if val.count(':') == 5:
            return val.lower()
    return 'bc:24:11:00:00:01'


# ------------------------------------------------------------ dir-backed storages

# <owner>/<file> or, for a linked clone, <basevmid>/<basefile>/<owner>/<file> (PVE's dir plugin names).
IMAGE_VOLNAME = re.compile(r'^(?:(\d+)/([^/\s]+\.(?:raw|qcow2|vmdk))/)?(\d+)/([^/\s]+\.(raw|qcow2|vmdk))$')
IMAGE_FILE = re.compile(r'^[^/\s]+\.(raw|qcow2|vmdk)$')
ISO_FILE = re.compile(r'^[^/\s]+\.(?:iso|img)$', re.I)
LINKED_PARENT = re.compile(r'^\.\./(\d+)/([^/]+\.(?:raw|qcow2|vmdk))$')
DRIVE_CONFIG_KEY = re.compile(r'^(?:ide|sata|scsi|virtio|efidisk|tpmstate|unused|mp)\d+$|^rootfs$')
QCOW2_MAGIC = b'QFI\xfb'
CLUSTER = 1 << 16
# (vmid, destroy-unreferenced-disks) while a qemu destroy runs; (storage, volname) while a content DELETE runs.
# The fake's task bodies run in asyncio tasks that copy the context, so they see the value set by the caller.
DESTROYING = contextvars.ContextVar('pve_sim_destroying', default=None)
DELETING = contextvars.ContextVar('pve_sim_deleting', default=None)


def write_qcow2(path, size, backing=None, backing_fmt='qcow2'):
    """An empty qcow2 (v3, 64 KiB clusters) of `size` virtual bytes, as `qemu-img create -f qcow2` makes it:
    header (+ backing file), refcount table, one refcount block, L1 table. Sparse on disk."""
    l1_size = (size + CLUSTER * (CLUSTER // 8) - 1) // (CLUSTER * (CLUSTER // 8))
    l1_clusters = (l1_size * 8 + CLUSTER - 1) // CLUSTER
    ext = b''
    if backing:
        fmt = backing_fmt.encode()
        ext += struct.pack('>II', 0xE2792ACA, len(fmt)) + fmt + b'\0' * (-len(fmt) % 8)
    ext += struct.pack('>II', 0, 0)
    name = backing.encode() if backing else b''
    boff = 104 + len(ext) if backing else 0
    header = struct.pack('>4sIQIIQIIQQIIQ', QCOW2_MAGIC, 3, boff, len(name), 16, size, 0, l1_size, 3 * CLUSTER,
                         CLUSTER, 1, 0, 0)
    header += struct.pack('>QQQII', 0, 0, 0, 4, 104) + ext + name
    refblock = struct.pack('>' + 'H' * (3 + l1_clusters), *([1] * (3 + l1_clusters)))
    with open(path, 'wb') as fh:
        fh.write(header)
        fh.seek(CLUSTER)
        fh.write(struct.pack('>Q', 2 * CLUSTER))
        fh.seek(2 * CLUSTER)
        fh.write(refblock)
        fh.truncate(3 * CLUSTER + l1_size * 8)


def image_info(path, fmt):
    """{format, size, used, ctime[, parent]} of an image file as PVE's file_size_info sees it, or None."""
    try:
        st = os.stat(path)
        info = {'format': fmt, 'size': st.st_size, 'used': st.st_blocks * 512, 'ctime': int(st.st_ctime)}
        if fmt == 'qcow2':
            with open(path, 'rb') as fh:
                head = fh.read(32)
                if len(head) < 32 or head[:4] != QCOW2_MAGIC:
                    return None
                boff, blen, info['size'] = struct.unpack('>QI4xQ', head[8:32])
                if boff and 0 < blen <= 1023:
                    fh.seek(boff)
                    info['parent'] = fh.read(blen).decode('utf-8', 'replace')
        return info
    except OSError:
        return None


class VolumeMap(dict):
    """The volumes of a dir-backed storage. Like PVE, '<owner>/<file>' also finds a linked clone that is
    listed as '<basevmid>/<basefile>/<owner>/<file>' (both name the same file)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.aliases = {}

    def _key(self, key):
        if dict.__contains__(self, key):
            return key
        found = IMAGE_VOLNAME.match(str(key))
        return self.aliases.get('{0}/{1}'.format(found.group(3), found.group(4))) if found else None

    def get(self, key, default=None):
        real = self._key(key)
        return default if real is None else dict.__getitem__(self, real)

    def __contains__(self, key):
        return self._key(key) is not None

    def __getitem__(self, key):
        real = self._key(key)
        if real is None:
            raise KeyError(key)
        return dict.__getitem__(self, real)


class SimPve(FakePve):
    """FakePve plus: VMs without a scripted agent get one on demand (auto_agent), and file-based storages
    with a `local_dir` keep their images and isos as real files there."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # None: off. Otherwise {'prefix': '10.60', 'mask': 16}: a running VM whose config has agent=1 and no
        # scripted agent answers network-get-interfaces with 10.60.<vmid // 250>.<vmid % 250 + 2>/16.
        self.auto_agent = None

    def auto_interfaces(self, vm):
        a, b = self.auto_agent['prefix'].split('.')[:2]
        ip = '{0}.{1}.{2}.{3}'.format(a, b, (vm.vmid // 250) % 256, vm.vmid % 250 + 2)
        return [{'name': 'lo', 'hardware-address': '00:00:00:00:00:00',
                 'ip-addresses': [{'ip-address': '127.0.0.1', 'ip-address-type': 'ipv4', 'prefix': 8}]},
                {'name': 'eth0', 'hardware-address': mac_of(vm.config),
                 'ip-addresses': [{'ip-address': ip, 'ip-address-type': 'ipv4',
                                   'prefix': int(self.auto_agent.get('mask', 16))}]}]

    async def _agent_call(self, match, values):
        if self.auto_agent:
            vm = self.vm(int(values['vmid']))
            if vm is not None and vm.agent is None and vm.status == 'running' and agent_enabled(vm.config):
                vm.agent = {'interfaces': self.auto_interfaces(vm)}
        return await super()._agent_call(match, values)

    # ------------------------------------------------------- dir-backed storages

    def local_dir(self, sid):
        """The real directory behind storage `sid`, or None for an in-memory storage."""
        store = self.storages.get(sid)
        return store.get('local_dir') if store else None

    @staticmethod
    def _options_of(store):
        return dict((k, v) for k, v in store.items() if k not in INTERNAL and k != 'local_dir')

    @staticmethod
    def _inside(root, path):
        """The real path if it lies inside root (no escape through '..' or symlinks), else None."""
        root, real = os.path.realpath(root), os.path.realpath(path)
        return real if real.startswith(root + os.sep) else None

    def _file_of(self, sid, volname):
        """(path, owner vmid or None) of a volume of a dir-backed storage, or (None, None)."""
        root = self.local_dir(sid)
        found = IMAGE_VOLNAME.match(volname or '') if root else None
        if found:
            path = os.path.join(root, 'images', found.group(3), found.group(4))
            return self._inside(root, path), int(found.group(3))
        if root and volname.startswith('iso/') and ISO_FILE.match(volname[4:]):
            return self._inside(root, os.path.join(root, 'template', 'iso', volname[4:])), None
        return None, None

    def make_image(self, sid, volname, size, fmt=None):
        """Create the file of an image volume (qcow2: empty image; raw/vmdk: sparse file) unless it exists."""
        path, owner = self._file_of(sid, volname)
        if path is None:
            raise PveError(500, "unable to create '{0}:{1}' - not an image in local_dir".format(sid, volname))
        if os.path.exists(path):
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        found = IMAGE_VOLNAME.match(volname)
        fmt = fmt or (found.group(5) if found else 'raw')
        if fmt == 'qcow2':
            backing = '../{0}/{1}'.format(found.group(1), found.group(2)) if found and found.group(1) else None
            write_qcow2(path, int(size), backing)
        else:
            with open(path, 'wb') as fh:
                fh.truncate(int(size))
        return path

    def _remove_file(self, path):
        """Delete an image file and, like PVE's free_image, its <vmid> directory once empty."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        try:
            os.rmdir(os.path.dirname(path))
        except OSError:
            pass

    def _volumes(self, name):
        store = self.storages[name]
        root = store.get('local_dir')
        if not root:
            return super()._volumes(name)
        out = VolumeMap()
        # vztmpl, backups, snippets stay in memory; images and isos are the files.
        for volname, vol in store.get('volumes', {}).items():
            if not IMAGE_VOLNAME.match(volname) and not volname.startswith('iso/'):
                out[volname] = vol
        cts = set(ct.vmid for ct in getattr(self, 'cts', []))
        images = os.path.join(root, 'images')
        for owner in sorted(os.listdir(images)) if os.path.isdir(images) else []:
            folder = os.path.join(images, owner)
            if not owner.isdigit() or not self._inside(root, folder) or not os.path.isdir(folder):
                continue
            for fname in sorted(os.listdir(folder)):
                found = IMAGE_FILE.match(fname)
                info = image_info(os.path.join(folder, fname), found.group(1)) if found else None
                if info is None:
                    continue
                short = '{0}/{1}'.format(owner, fname)
                linked = LINKED_PARENT.match(info.get('parent') or '')
                volname = '{0}/{1}/{2}'.format(linked.group(1), linked.group(2), short) if linked else short
                info.update(content='rootdir' if int(owner) in cts else 'images', vmid=int(owner))
                out[volname] = info
                out.aliases[short] = volname
        isodir = os.path.join(root, 'template', 'iso')
        for fname in sorted(os.listdir(isodir)) if os.path.isdir(isodir) else []:
            path = os.path.join(isodir, fname)
            if ISO_FILE.match(fname) and os.path.isfile(path):
                st = os.stat(path)
                out['iso/' + fname] = {'content': 'iso', 'format': 'iso', 'size': st.st_size,
                                       'ctime': int(st.st_ctime)}
        return out

    def _item(self, name, volname, vol):
        item = super()._item(name, volname, vol)
        if vol.get('parent'):
            item['parent'] = vol['parent']
        return item

    def _space(self, store):
        if not store.get('local_dir'):
            return super()._space(store)
        name = next(k for k, v in self.storages.items() if v is store)
        used = sum(int(vol.get('size') or 0) for vol in self._volumes(name).values())
        total = int(store.get('total', 100 * 1024 ** 3))
        return total, used, max(total - used, 0)

    def _parse_volname(self, store, volname):
        # PVE's dir plugin also parses linked clones: <basevmid>/<basefile>/<vmid>/<file>.
        found = re.match(r'^(\d+)/([^/\s]+)/(\d+)/([^/\s]+)$', volname)
        if found and _is_file(store):
            parse_name_dir(found.group(2))
            return 'images', int(found.group(3)), parse_name_dir(found.group(4))[1]
        return super()._parse_volname(store, volname)

    def _qm_alloc(self, sid, vmid, fmt, size, linked_from=None):
        volid, fmt = super()._qm_alloc(sid, vmid, fmt, size, linked_from)
        store = self.storages[sid]
        if store.get('local_dir'):
            volname = volume_ref(volid)[1]
            store.get('volumes', {}).pop(volname, None)
            if 'avail' in store:
                store['avail'] += size
            self.make_image(sid, volname, size, fmt)
        return volid, fmt

    def _qm_free(self, volid):
        sid, volname = volume_ref(volid)
        path, owner = self._file_of(sid, volname) if sid else (None, None)
        destroying = DESTROYING.get()
        # qm destroy frees only the volumes the VM owns (a linked clone's base stays); isos never.
        if path and owner is not None and (destroying is None or destroying[0] == owner):
            self._remove_file(path)
        return super()._qm_free(volid)

    def _qm_rename_volume(self, volid):
        new = super()._qm_rename_volume(volid)
        old_path = self._file_of(*volume_ref(volid))[0] if volume_ref(volid)[0] else None
        new_path = self._file_of(*volume_ref(new))[0] if new != volid else None
        if old_path and new_path and os.path.exists(old_path) and not os.path.exists(new_path):
            os.rename(old_path, new_path)
        return new

    async def _qm_destroy(self, v, user):
        token = DESTROYING.set((int(v['vmid']), bool(v.get('destroy-unreferenced-disks'))))
        try:
            return await super()._qm_destroy(v, user)
        finally:
            DESTROYING.reset(token)

    def _pool_leave(self, vmid):
        # Called by the destroy task once the VM is gone: the moment to drop unreferenced disks.
        destroying = DESTROYING.get()
        if destroying and destroying[0] == vmid and destroying[1]:
            for sid in list(self.storages):
                for volname, vol in list(self._volumes(sid).items()) if self.local_dir(sid) else []:
                    if vol.get('vmid') == vmid and vol.get('content') == 'images':
                        path = self._file_of(sid, volname)[0]
                        if path:
                            self._remove_file(path)
        return super()._pool_leave(vmid)

    async def _content_create(self, v, user):
        volid = await super()._content_create(v, user)
        sid = v['storage']
        store = self.storages[sid]
        if store.get('local_dir'):
            volname = volume_ref(volid)[1]
            vol = store.get('volumes', {}).pop(volname, None) or {}
            if 'avail' in store:
                store['avail'] += int(vol.get('size') or 0)
            self.make_image(sid, volname, int(vol.get('size') or 0), vol.get('format'))
        return volid

    def _find_volume(self, sid, volname):
        vol = super()._find_volume(sid, volname)
        if vol is not None and DELETING.get() == (sid, volname):
            path = self._file_of(sid, volname)[0]
            if path:
                self._remove_file(path)
        return vol

    async def _content_delete(self, v, user):
        try:
            target = self._volume_target(v)[:2]
        except PveError:
            target = None
        token = DELETING.set(target if target and self.local_dir(target[0]) else None)
        try:
            return await super()._content_delete(v, user)
        finally:
            DELETING.reset(token)

    def store_file(self, storage, name, size, content='iso'):
        if content == 'iso' and self.local_dir(storage) and ISO_FILE.match(name):
            path = self._file_of(storage, 'iso/' + name)[0]
            if path:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as fh:
                    fh.truncate(int(size))
                return
        return super().store_file(storage, name, size, content)


# ------------------------------------------------------------------ loading

def storage_env(name):
    """The environment variable that sets a storage's local_dir: PVE_SIM_STORAGE_DIR_<NAME>."""
    return 'PVE_SIM_STORAGE_DIR_' + re.sub(r'[^A-Z0-9]', '_', name.upper())


def load(pve, spec, password, data_dir=None):
    """Fill the fake from the guests file: the optional "cluster" section, then "guests"."""
    cluster = spec.get('cluster') or {}
    data_dir = os.path.abspath(data_dir or '.')
    if cluster.get('name'):
        pve.cluster_name = cluster['name']
    for node in cluster.get('nodes') or []:
        node = {'name': node} if isinstance(node, str) else node
        pve.add_node(node['name'], online=node.get('online', True))
    for name, store in (cluster.get('storages') or {}).items():
        entry = {'active': 1, 'files': set(), 'volumes': {}}
        entry.update(dict((k, v) for k, v in store.items() if k not in ('files', 'volumes', 'local_dir')))
        for fname in store.get('files') or []:
            entry['files'].add(fname)
        pve.storages[name] = entry
        for volname, vol in (store.get('volumes') or {}).items():
            entry['volumes'][volname] = dict({'content': 'images', 'ctime': int(time.time())}, **vol)
        root = os.environ.get(storage_env(name)) or store.get('local_dir')
        if root:
            # A real directory behind the storage; relative paths are taken from the cluster's data dir.
            if not _is_file(entry):
                raise SystemExit('pve-sim: storage {0}: local_dir needs a file-based type (dir, nfs, cifs, ...), '
                                 'not {1}'.format(name, entry.get('type')))
            root = os.path.abspath(os.path.join(data_dir, root))
            for sub in ('images', os.path.join('template', 'iso')):
                os.makedirs(os.path.join(root, sub), exist_ok=True)
            entry['local_dir'] = entry['path'] = root
            for fname in sorted(entry['files']):
                path = pve._file_of(name, 'iso/' + fname)[0]
                if path and not os.path.exists(path):
                    open(path, 'wb').close()
            entry['files'] = set()
    for userid, pw in (cluster.get('users') or {}).items():
        pve.users[userid] = pw
    for tokenid, secret in (cluster.get('apitokens') or {}).items():
        pve.apitokens[tokenid] = secret
    for grant in cluster.get('acl') or []:
        pve.grant(grant['user'], grant['path'], *grant['privs'])
    if cluster.get('auto_agent'):
        pve.auto_agent = dict(cluster['auto_agent'])
    prefix = os.environ.get('PVE_SIM_AGENT_PREFIX')
    if prefix:
        # e.g. 127.60: every VM "has" a loopback address, so a test can run a real service on it.
        if not re.match(r'^\d{1,3}\.\d{1,3}$', prefix) or max(int(x) for x in prefix.split('.')) > 255:
            raise SystemExit('pve-sim: PVE_SIM_AGENT_PREFIX must be two octets like 127.60, not ' + repr(prefix))
        pve.auto_agent = dict(pve.auto_agent or {}, prefix=prefix)
        pve.auto_agent.setdefault('mask', 8 if prefix.startswith('127.') else 16)
    if os.environ.get('PVE_SIM_AGENT_MASK'):
        pve.auto_agent = dict(pve.auto_agent or {'prefix': '10.60'}, mask=int(os.environ['PVE_SIM_AGENT_MASK']))
    for key in ('ticket_ttl', 'lock_wait', 'shutdown_default_timeout', 'ha_delay'):
        if key in cluster:
            setattr(pve, key, cluster[key])
    pools = cluster.get('pools') or {}
    for name, meta in pools.items():
        pve.pools.setdefault(name, set())
        pve.pool_info[name] = {'comment': (meta or {}).get('comment'), 'storage': set((meta or {}).get('storage', []))}
    for guest in spec.get('guests') or []:
        add_guest(pve, guest)


def add_guest(pve, guest):
    """A guest as fakepve's own command line reads it, plus pool, agent_hangs and stats."""
    if guest.get('type', 'qemu') == 'lxc':
        obj = pve.add_ct(guest['vmid'], guest.get('name'), node=guest.get('node', 'pve1'),
                         status=guest.get('status', 'stopped'), config=guest.get('config', {}),
                         template=guest.get('template', False), lock=guest.get('lock'),
                         ostemplate=guest.get('ostemplate'))
        keys = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state')
    else:
        obj = pve.add_vm(guest['vmid'], guest['name'], node=guest.get('node', 'pve1'),
                         status=guest.get('status', 'stopped'), qmpstatus=guest.get('qmpstatus'),
                         config=guest.get('config', {}), template=guest.get('template', False),
                         lock=guest.get('lock'))
        obj.acpi = guest.get('acpi', True)
        keys = ('shutdown_secs', 'start_secs', 'stop_secs', 'start_error', 'ha_state', 'agent', 'agent_hangs')
        if guest.get('lock'):
            obj.config['lock'] = guest['lock']
    for key in keys:
        if key in guest:
            setattr(obj, key, guest[key])
    if guest.get('stats'):
        obj.stats.update(guest['stats'])
    materialize(pve, obj.config)
    if guest.get('pool'):
        pve._pool_join(guest['pool'], guest['vmid'])
    return obj


def materialize(pve, config):
    """Create the missing files of the image volumes a guest config references on dir-backed storages,
    with the config's size= (default 4 MiB), so the storage holds what the config says."""
    for key, value in config.items():
        if not DRIVE_CONFIG_KEY.match(key):
            continue
        volume, _, props = str(value).partition(',')
        sid, name = volume_ref(volume)
        if not sid or not pve.local_dir(sid) or not IMAGE_VOLNAME.match(name):
            continue
        size = 4 * 1024 ** 2
        for part in props.split(','):
            if part.startswith('size=') and _bytes(part[5:]):
                size = _bytes(part[5:])
        pve.make_image(sid, name, size)


# ------------------------------------------------------------------ control API

def control_app(pve):
    """Plain-HTTP JSON endpoints that change the fake from outside the process."""
    routes = web.RouteTableDef()

    async def body(request):
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='body is not JSON') from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text='body is not a JSON object')
        return data

    def guest_of(data):
        vmid = int(data['vmid'])
        guest = pve.guest(vmid)
        if guest is None:
            raise web.HTTPNotFound(text='no guest {0}'.format(vmid))
        return guest

    def done(**extra):
        return web.json_response(dict({'ok': True}, **extra))

    @routes.get('/health')
    async def health(request):
        return done(cluster=pve.cluster_name, url=pve.url, guests=len(pve.vms) + len(pve.cts))

    @routes.get('/state')
    async def state(request):
        guests = []
        for g in list(pve.vms) + list(pve.cts):
            item = {'vmid': g.vmid, 'type': g.guest.split('/')[0], 'name': g.name, 'node': g.node,
                    'status': g.status, 'lock': g.lock, 'template': bool(g.template)}
            if hasattr(g, 'agent'):
                item['agent'] = g.agent is not None
            guests.append(item)
        return web.json_response({'cluster': pve.cluster_name, 'quorate': pve.quorate, 'time_scale': pve.time_scale,
                                  'nodes': pve.nodes, 'network': pve.network, 'failures': [
                                      {'method': k[0], 'path': k[1], **v} for k, v in pve.failures.items()],
                                  'storages': sorted(pve.storages), 'storage_dirs': dict(
                                      (k, v['local_dir']) for k, v in pve.storages.items() if v.get('local_dir')),
                                  'pools': dict(
                                      (k, sorted(v)) for k, v in pve.pools.items()), 'guests': guests})

    @routes.get('/requests')
    async def requests(request):
        since = int(request.query.get('since', 0))
        rows = [{'n': n, 'method': m, 'path': p, 'body': b.decode('utf-8', 'replace')}
                for n, (m, p, b) in enumerate(pve.requests) if n >= since]
        return web.json_response({'count': len(pve.requests), 'requests': rows})

    @routes.delete('/requests')
    async def clear_requests(request):
        pve.requests.clear()
        return done()

    @routes.post('/fail')
    async def fail(request):
        d = await body(request)
        try:
            pve.fail(d['method'].upper(), d['path'], status=d.get('status'), message=d.get('message'),
                     html=d.get('html', False), error=d.get('error'), times=d.get('times'))
        except (TypeError, ValueError, KeyError) as e:
            raise web.HTTPBadRequest(text=str(e)) from None
        return done()

    @routes.delete('/fail')
    async def unfail(request):
        d = await body(request)
        if d.get('method') and d.get('path'):
            pve.failures.pop((d['method'].upper(), d['path']), None)
        else:
            pve.failures.clear()
        return done()

    @routes.get('/errors')
    async def errors(request):
        return web.json_response(pve.errors_for(request.query['method'].upper(), request.query['path']))

    @routes.post('/quorum')
    async def quorum(request):
        d = await body(request)
        if d.get('quorate', True):
            pve.regain_quorum()
        else:
            pve.lose_quorum()
        return done(quorate=pve.quorate)

    @routes.post('/node')
    async def node(request):
        d = await body(request)
        pve.set_node_offline(d['node'], offline=not d.get('online', True))
        return done(nodes=pve.nodes)

    @routes.post('/network')
    async def network(request):
        d = await body(request)
        if any(k in d for k in ('latency', 'jitter')):
            pve.slow_network(float(d.get('latency', 0)), float(d.get('jitter', 0)))
        if d.get('node_latency'):
            for name, secs in d['node_latency'].items():
                pve.slow_network(float(secs), node=name)
        if any(k in d for k in ('drop_rate', 'hang_rate', 'hang_secs', 'seed')):
            pve.flaky_network(drop_rate=float(d.get('drop_rate', 0)), hang_rate=float(d.get('hang_rate', 0)),
                              hang_secs=float(d.get('hang_secs', 120)), seed=d.get('seed'))
            if d.get('seed') is not None:
                pve._random.seed(d['seed'])
        return done(network=pve.network)

    @routes.post('/time-scale')
    async def time_scale(request):
        d = await body(request)
        pve.time_scale = float(d['value'])
        return done(time_scale=pve.time_scale)

    @routes.post('/tickets/revoke')
    async def revoke(request):
        pve.revoke_tickets()
        return done()

    @routes.post('/tickets/ttl')
    async def ttl(request):
        d = await body(request)
        pve.ticket_ttl = float(d['secs'])
        if d.get('existing'):
            for session in pve.tickets.values():
                session['expires'] = min(session['expires'], time.time() + pve.ticket_ttl)
        return done(ticket_ttl=pve.ticket_ttl)

    @routes.post('/apitoken')
    async def apitoken(request):
        d = await body(request)
        if d.get('secret') is None:
            pve.apitokens.pop(d['tokenid'], None)
        else:
            pve.apitokens[d['tokenid']] = d['secret']
        return done()

    @routes.post('/lock')
    async def lock(request):
        d = await body(request)
        g = guest_of(d)
        if d.get('lock'):
            pve.snapshot_lock(g.vmid, d['lock'])
        else:
            pve.unlock(g.vmid)
        return done(lock=g.lock)

    @routes.post('/config-lock')
    async def config_lock(request):
        d = await body(request)
        g = guest_of(d)
        if d.get('release'):
            pve.release_config_lock(g.vmid)
        else:
            try:
                await pve.hold_config_lock(g.vmid, d.get('secs'))
            except Exception as e:  # noqa: BLE001 - already held
                raise web.HTTPConflict(text=str(e)) from None
        return done()

    @routes.post('/backup')
    async def backup(request):
        d = await body(request)
        g = guest_of(d)
        upid = await pve.backup(g.vmid, secs=float(d.get('secs', 30)))
        return done(upid=upid)

    @routes.post('/migrate')
    async def migrate(request):
        d = await body(request)
        g = guest_of(d)
        upid = await pve.migrate(g.vmid, d['target'], secs=float(d.get('secs', 20)))
        return done(upid=upid)

    @routes.post('/guest')
    async def guest(request):
        """Set fake-only attributes of a guest: agent, agent_hangs, start_error, *_secs, acpi, status, stats."""
        d = await body(request)
        g = guest_of(d)
        for key in ('agent', 'agent_hangs', 'start_error', 'shutdown_secs', 'start_secs', 'stop_secs', 'acpi',
                    'ha_state'):
            if key in d:
                setattr(g, key, d[key])
        if 'status' in d:
            g.status = d['status']
            if hasattr(g, 'qmpstatus'):
                g.qmpstatus = d['status']
            g.started_at = time.time() if d['status'] == 'running' else None
        if d.get('stats'):
            g.stats.update(d['stats'])
        return done()

    @routes.post('/guests')
    async def add_guests(request):
        d = await body(request)
        made = []
        for spec in d.get('guests') or []:
            if pve.guest(int(spec['vmid'])) is not None:
                raise web.HTTPConflict(text='guest {0} exists'.format(spec['vmid']))
            made.append(add_guest(pve, spec).vmid)
        return done(added=made)

    @routes.post('/volume')
    async def volume(request):
        """Register a disk image made outside PVE (e.g. qemu-img create over SSH): storage, volume, size, format."""
        d = await body(request)
        store = pve.storages.get(d['storage'])
        if store is None:
            raise web.HTTPNotFound(text='no storage {0}'.format(d['storage']))
        volname = d['volume'].split(':', 1)[1] if ':' in d['volume'] else d['volume']
        fmt = d.get('format') or (volname.rsplit('.', 1)[-1] if '.' in volname else 'raw')
        vmid = d.get('vmid')
        if vmid is None and volname.split('/')[0].isdigit():
            vmid = int(volname.split('/')[0])
        if pve.local_dir(d['storage']):
            # Dir-backed: the file is the volume; create it (empty image) or delete it.
            path = pve._file_of(d['storage'], volname)[0]
            if path is None:
                raise web.HTTPBadRequest(text='not an image or iso volume name: {0}'.format(volname))
            if d.get('delete'):
                pve._remove_file(path)
            elif volname.startswith('iso/'):
                pve.store_file(d['storage'], volname[4:], int(d.get('size', 0)))
            else:
                pve.make_image(d['storage'], volname, int(d.get('size', 0)), d.get('format'))
        elif d.get('delete'):
            store.setdefault('volumes', {}).pop(volname, None)
        else:
            store.setdefault('volumes', {})[volname] = {'content': d.get('content', 'images'), 'format': fmt,
                                                        'size': int(d.get('size', 0)), 'vmid': vmid,
                                                        'ctime': int(time.time())}
        return done(volid='{0}:{1}'.format(d['storage'], volname))

    @routes.post('/ceph')
    async def ceph(request):
        d = await body(request)
        if d.get('down'):
            pve.ceph_down()
        elif d.get('slow'):
            pve.ceph_slow(float(d['slow']))
        else:
            pve.ceph_recover()
        return done()

    app = web.Application()
    app.add_routes(routes)
    return app


# ------------------------------------------------------------------ main

async def serve(args):
    with open(args.guests) as fh:
        spec = json.load(fh)
    pve = SimPve(user=args.user, password=args.password, host=args.host, port=args.port)
    pve.time_scale = args.time_scale
    if args.name:
        pve.cluster_name = args.name
    data_dir = os.path.abspath(args.data_dir or '.')
    load(pve, spec, args.password, data_dir)
    dirs = dict((name, store['local_dir']) for name, store in sorted(pve.storages.items()) if store.get('local_dir'))
    if args.data_dir:
        with open(os.path.join(data_dir, 'storage-dirs.json'), 'w') as fh:
            json.dump(dirs, fh, indent=1)
    if args.name:
        pve.cluster_name = args.name
    await pve.start(args.cert, args.key)
    control = web.AppRunner(control_app(pve), access_log=None)
    await control.setup()
    await web.TCPSite(control, args.host, args.control_port).start()
    print('pve-sim ready https://{0}:{1} control http://{0}:{2}'.format(args.host, args.port, args.control_port),
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = parent_pid()
    orphaned = []
    # Keep a reference: the event loop holds tasks only weakly.
    watchdog = asyncio.ensure_future(watch_parent(parent, stop, orphaned)) if parent is not None else None
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
    await control.cleanup()
    await pve.stop()
    if orphaned:
        cleanup_dir()


def parent_pid():
    """The PID of env PVE_SIM_PARENT_PID (the process whose life bounds ours), or None."""
    value = os.environ.get('PVE_SIM_PARENT_PID', '').strip()
    return int(value) if value.isdigit() and int(value) > 1 else None


def start_time(pid):
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if the process is gone.
    A PID with another start time is a new process that reused the number."""
    try:
        with open('/proc/{0}/stat'.format(pid)) as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    fields = stat[stat.rfind(')') + 2:].split()
    return fields[19] if len(fields) > 19 else None


async def watch_parent(pid, stop, orphaned):
    """Set `stop` once process `pid` is gone (or its PID was reused); polls every 0.5 s."""
    born = start_time(pid)
    while not stop.is_set():
        if born is None or start_time(pid) != born:
            print('pve-sim: parent process {0} is gone; exiting'.format(pid), file=sys.stderr, flush=True)
            orphaned.append(pid)
            stop.set()
            return
        await asyncio.sleep(0.5)


def cleanup_dir():
    """Remove the folders of env PVE_SIM_CLEANUP_DIR (os.pathsep-separated: the harness's temp state dir and
    CA dir) after an orphaned exit. Only absolute paths at least two levels deep are touched."""
    import shutil
    for folder in os.environ.get('PVE_SIM_CLEANUP_DIR', '').split(os.pathsep):
        folder = folder.rstrip('/')
        if os.path.isabs(folder) and folder.count('/') >= 2 and os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)


def main():
    import fakepve
    if fakepve.__version__ != EXPECTED_VERSION:
        print('pve-sim: warning: fakepve {0} installed, written for {1}'.format(fakepve.__version__,
                                                                               EXPECTED_VERSION), file=sys.stderr)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--guests', required=True)
    p.add_argument('--host', required=True)
    p.add_argument('--port', type=int, default=8006)
    p.add_argument('--control-port', type=int, default=8007)
    p.add_argument('--user', default='root@pam')
    p.add_argument('--password', default='secret')
    p.add_argument('--time-scale', type=float, default=0.0)
    p.add_argument('--name')
    p.add_argument('--data-dir', help='base of relative local_dir paths (default: the current folder)')
    p.add_argument('--cert', required=True)
    p.add_argument('--key', required=True)
    args = p.parse_args()
    if not loopback(args.host):
        p.error('--host must be an IPv4 loopback address (127.0.0.0/8)')
    asyncio.run(serve(args))


if __name__ == '__main__':
    main()
