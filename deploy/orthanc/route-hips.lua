-- route-hips.lua: Orthanc sends stable hip and pelvis radiograph studies to predraft.
--
-- Loaded by "LuaScripts" in orthanc.json (tested with Orthanc 1.10, Lua 5.3). When a study has had no
-- new instance for "StableAge" seconds, every instance of it that
--   * is a radiograph predraft classifies: CR, DX (for presentation) or Secondary Capture (also its multi-frame
--     grayscale and true colour classes), by SOP class;
--   * and is in a series whose BodyPartExamined, or a study whose StudyDescription, names a keyword
--     (HIP or PELVIS by default, as whole words);
--   * and was not sent to predraft before
-- is sent to predraft in one asynchronous Orthanc job. Structured reports (predraft's own drafts coming
-- back, among others), presentation states, key objects and non-image objects are never sent, whatever
-- the study says, so a draft that predraft stores back into this Orthanc is not sent to predraft again.
--
-- Settings: the "PredraftRouting" section of orthanc.json (the defaults below apply where it is silent):
--   "Via": "dimse" (C-STORE to DicomModalities[Modality]) or "dicomweb" (STOW-RS to DicomWeb.Servers[DicomWebServer])
-- Bookkeeping: each instance sent gets the user metadata "PredraftRouted" (declared in "UserMetadata") set
-- to the id of the job that sends it. An instance whose job failed is sent again the next time its study
-- becomes stable; a failed job can also be retried at once with POST /jobs/<id>/resubmit.
-- Orthanc keeps one function per callback name across all "LuaScripts": if another script of the site
-- defines OnStableStudy or OnJobFailure too, merge them.

local DEFAULTS = {
  Via = 'dimse',
  Modality = 'predraft',
  DicomWebServer = 'predraft',
  Keywords = { 'HIP', 'PELVIS' },
}

-- The image SOP classes predraft stores and classifies (predraft refuses DX For Processing).
local ROUTABLE_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.1'] = 'CR',
  ['1.2.840.10008.5.1.4.1.1.1.1'] = 'DX',
  ['1.2.840.10008.5.1.4.1.1.7'] = 'SC',
  -- Multi-frame Grayscale Byte, Grayscale Word and True Color SC: predraft classifies them when they hold one frame.
  ['1.2.840.10008.5.1.4.1.1.7.2'] = 'SC grayscale byte',
  ['1.2.840.10008.5.1.4.1.1.7.3'] = 'SC grayscale word',
  ['1.2.840.10008.5.1.4.1.1.7.4'] = 'SC true color',
}

local ROUTED = 'PredraftRouted'
local LOG_PREFIX = 'predraft routing: '

local function Settings()
  local settings = {}
  for key, value in pairs(DEFAULTS) do
    settings[key] = value
  end
  local configured = GetOrthancConfiguration()['PredraftRouting']
  if configured ~= nil then
    for key, value in pairs(configured) do
      settings[key] = value
    end
  end
  return settings
end

-- Whether text names one of the keywords as a whole word ("XR PELVIS AP", "HIPS"; not "WHIPPLE").
local function Mentions(text, keywords)
  if text == nil or text == '' then
    return false
  end
  text = string.upper(text)
  for _, word in ipairs(keywords) do
    if string.find(text, '%f[%w]' .. string.upper(word) .. 'S?%f[%W]') then
      return true
    end
  end
  return false
end

-- Whether the job that an earlier stable event started for an instance failed. A job that Orthanc no
-- longer remembers ("JobsHistorySize") counts as delivered: sending again is harmless for predraft
-- (it ignores a SOP Instance UID it holds), but a study should not go round for ever.
local function JobFailed(jobId)
  local answer = RestApiGet('/jobs/' .. jobId)
  return answer ~= nil and ParseJson(answer)['State'] == 'Failure'
end

local function Submit(settings, instances)
  local answer
  if settings.Via == 'dicomweb' then
    answer = RestApiPost('/dicom-web/servers/' .. settings.DicomWebServer .. '/stow',
                         DumpJson({ Resources = instances, Synchronous = false }, true))
  else
    -- Not "Permissive": in Orthanc 1.10 a permissive store job reports success even when predraft cannot be
    -- reached at all; a plain one fails visibly, and its instances are sent again.
    answer = RestApiPost('/modalities/' .. settings.Modality .. '/store',
                         DumpJson({ Resources = instances, Asynchronous = true }, true))
  end
  if answer == nil then
    return nil
  end
  return ParseJson(answer)['ID']
end

function OnStableStudy(studyId, tags, metadata)
  local settings = Settings()
  local studyMatches = Mentions(tags['StudyDescription'], settings.Keywords)
  local toSend, already, notRoutable = {}, 0, 0

  local series = RestApiGet('/studies/' .. studyId .. '/series?expand')
  if series == nil then
    print(LOG_PREFIX .. 'study ' .. studyId .. ': gone before it could be routed')
    return
  end
  for _, oneSeries in ipairs(ParseJson(series)) do
    local seriesMatches = studyMatches or Mentions(oneSeries['MainDicomTags']['BodyPartExamined'], settings.Keywords)
    for _, instanceId in ipairs(oneSeries['Instances']) do
      local answer = RestApiGet('/instances/' .. instanceId .. '/metadata?expand')
      local instanceMetadata = answer and ParseJson(answer) or {}
      if not seriesMatches or ROUTABLE_SOP_CLASSES[instanceMetadata['SopClassUid'] or ''] == nil then
        notRoutable = notRoutable + 1
      elseif instanceMetadata[ROUTED] ~= nil and not JobFailed(instanceMetadata[ROUTED]) then
        already = already + 1
      else
        table.insert(toSend, instanceId)
      end
    end
  end

  if #toSend == 0 then
    print(string.format('%sstudy %s: nothing to send (%d already sent, %d not routable)',
                        LOG_PREFIX, studyId, already, notRoutable))
    return
  end
  local jobId = Submit(settings, toSend)
  if jobId == nil then
    print(string.format('%sstudy %s: ERROR: could not start sending %d instance(s) via %s: check "PredraftRouting"',
                        LOG_PREFIX, studyId, #toSend, settings.Via))
    return
  end
  for _, instanceId in ipairs(toSend) do
    RestApiPut('/instances/' .. instanceId .. '/metadata/' .. ROUTED, jobId)
  end
  print(string.format('%sstudy %s: sending %d instance(s) via %s in job %s (%d already sent, %d not routable)',
                      LOG_PREFIX, studyId, #toSend, settings.Via, jobId, already, notRoutable))
end

function OnJobFailure(jobId)
  local answer = RestApiGet('/jobs/' .. jobId)
  if answer == nil then
    return
  end
  local job = ParseJson(answer)
  local settings = Settings()
  local ours = job['Type'] == 'DicomWebStowClient' and settings.Via == 'dicomweb'
  if job['Type'] == 'DicomModalityStore' and settings.Via ~= 'dicomweb' then
    local modality = RestApiGet('/modalities/' .. settings.Modality .. '/configuration')
    ours = modality ~= nil and job['Content']['RemoteAet'] == ParseJson(modality)['AET']
  end
  if ours then
    print(string.format('%sjob %s FAILED (%s %s): retry with POST /jobs/%s/resubmit; its instances are '
                        .. 'also sent again when their study next becomes stable',
                        LOG_PREFIX, jobId, job['ErrorDescription'] or '', job['ErrorDetails'] or '', jobId))
  end
end
