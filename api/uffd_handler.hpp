#pragma once
// `ember uffd-handler [--accept-timeout SECONDS] SOCKET MEMFILE`: a page-fault handler for
// snapshots loaded with mem_backend Uffd (Firecracker's examples/uffd on_demand_handler, as a
// tool). It listens on SOCKET, takes one VMM's userfaultfd and region list, serves every fault
// from MEMFILE (zeros for its holes and for pages the VMM removed), and when the VMM goes away
// prints `pages_copied=N zero=M removed=K` to stderr and exits 0.

namespace ember {

// argv[0] is "uffd-handler". Returns the process exit status.
int uffd_handler_main(int argc, char** argv);

} // namespace ember
