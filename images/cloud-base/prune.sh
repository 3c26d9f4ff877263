#!/bin/sh
# Run as root in the build stage of images/cloud-base/Dockerfile, on the
# --target directory holding boto3 & co. Keeps only the AWS service models the
# fetch stages call (botocore ships ~430 of them, ~25 MB).
# $1 = target dir; $2 = space-separated botocore service names to keep.
set -eu
dir=${1:?target dir}
keep=" $2 "

for svc in "$dir"/botocore/data/*/; do
    name=$(basename "$svc")
    case $keep in *" $name "*) ;; *) rm -rf "$svc" ;; esac
done
# boto3 resource models: only S3's may be used (Bucket/Object helpers).
for res in "$dir"/boto3/data/*/; do
    [ "$(basename "$res")" = s3 ] || rm -rf "$res"
done
# Scripts (jmespath's jp.py) and test suites are not needed.
rm -rf "${dir:?}/bin"
find "$dir" -depth -type d \( -name tests -o -name test \) -exec rm -rf {} +
# Every kept service must still load (catches a typo in the list).
# shellcheck disable=SC2086  # $2 is a word list on purpose
PYTHONPATH=$dir python3 -c '
import sys, botocore.session
s = botocore.session.get_session()
for name in sys.argv[1:]:
    s.get_service_model(name)
' $2
