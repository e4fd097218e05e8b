// Package filebridge is onebox's file bridge: it watches folders and turns every
// complete file dropped there into one trigger, with the file's content as the
// payload. Like every bridge it is an ordinary MQTT 3.1.1 client: it publishes
// trigger/<handler>/<id> (QoS 1, id "file-"+topics.NewID()) and waits for
// status/<id> and result/<id> through one shared runwait subscription. The file's
// name is never sent anywhere: only its bytes are the payload, so a name is data,
// never part of a command line.
//
// # Folders
//
// Inbox is a folder whose subfolders name handlers: a file completed in
// inbox/<handler>/ triggers <handler>. Any subfolder whose name is a valid handler
// name ([a-z0-9][a-z0-9_-]{0,62}) is watched, including subfolders created while
// the bridge runs; other subfolders and files lying directly in the inbox are
// logged once and left alone. The inbox itself is created when missing; handler
// folders are not created for you (mkdir inbox/<handler> to enable one). Folders
// maps further folders to a handler each (created when missing).
//
// # Complete files only: inotify, not fsnotify
//
// A file must run once, with its whole content, and only once it is complete. On
// Linux that is exactly two inotify events: IN_CLOSE_WRITE (a writer closed the
// file) and IN_MOVED_TO (a file was renamed into the folder, the atomic way
// editors, rsync, curl -o with a temp name and browsers finish a download).
// fsnotify does not expose IN_CLOSE_WRITE (it reports Create and Write, which fire
// for every write(2) of a file still being written), so a file written slowly in
// pieces would be read half-written, or many times. The bridge therefore uses
// inotify directly through golang.org/x/sys/unix (see watch_linux.go); it also
// watches IN_CREATE for new handler folders and does a full rescan on
// IN_Q_OVERFLOW. The bridge needs Linux.
//
// Temporaries and hidden files never trigger: names starting with "." or "#",
// and names ending in .swp, .swx, ~, .part, .tmp, .crdownload, and vim's 4913
// probe. An editor's save (swap file, backup file, write to a temporary, rename
// over the name) is therefore one trigger for the final name.
//
// Rescans (at start, after a reconnect to the broker, after IN_Q_OVERFLOW, for a
// new handler folder) cannot see whether a file is still open for writing: a file
// found by a rescan is taken only once its size and modification time have been
// still for Settle (default 1s). A writer that pauses longer than that exactly
// while a rescan runs may be read early; the inotify path has no such window.
//
// # One run per file: processing, done and failed
//
// For a folder F (inbox/<handler> or a Folders entry) with handler H, let B be the
// folder beside it: filepath.Dir(inbox) for the inbox convention, filepath.Dir(F)
// for a Folders entry. A file F/name goes through:
//
//	B/.onebox/processing/H/<id>/name   taken: moved out of F before publishing
//	B/.onebox/processing/H/<id>/.published   written once the broker acknowledged the trigger
//	B/done/H/name + name.out + name.status.json     the run succeeded
//	B/failed/H/name + name.out + name.status.json   it failed, timed out, was rejected,
//	                                                was too large, or got no answer
//
// name.out is the run's stdout (result/<id>, absent when no container ran) and
// name.status.json the final run record, indented. Nothing is overwritten: when
// name (or its .out or .status.json) is already taken in done/H or failed/H, the
// file is stored as <stem>.<id><ext> (e.g. report.file-20261203T190501.123Z-0000-9f3a1c2b.txt)
// with its .out and .status.json named after that. So dropping the same name
// again runs again and keeps both results.
//
// Moving the file out of F before publishing is what marks it handled: a restart
// never finds it in F again. At start the bridge looks in processing/ first: an
// entry without .published is published again with the SAME id (the invoker
// drops ids it has seen, so a trigger that did reach it does not run twice); an
// entry with .published is waited for again. An answer the invoker published
// while the bridge was down is not retained by MQTT and so is lost: such a file
// goes to failed/ with reason "no answer" once the wait bound passes. The file is
// kept; its run happened once. Nothing runs twice, nothing is lost.
//
// The wait for an answer is bounded: AnswerTimeout when set, else the handler's
// timeout from the retained onebox/handlers message plus one minute, else five
// minutes; each queued or running record from the invoker restarts the bound.
//
// # Limits and a broker that is away
//
// A file larger than the payload limit (MaxPayload, the broker's packet limit,
// minus the MQTT PUBLISH header for its topic) is not published: it goes straight
// to failed/ with a rejected record whose reason is "too large" and whose error
// gives its size and the limit. At most Concurrency files (default 8) are in
// flight (published and not yet answered); more wait their turn. While the broker
// is unreachable files stay where they were dropped; the bridge rescans every
// folder when it (re)connects.
package filebridge
