// Where itsmc's telemetry and data go: Application Insights for the Functions host (workspace-based, on the
// same workspace, so one place to query), and the data collection rule through which the sync sends
// ServiceDesk_CL and ServiceDeskLog_CL rows with the Logs Ingestion API.
//
// The rule is of kind Direct: it carries its own logs ingestion endpoint, so no data collection endpoint is
// needed (only private link would need one).

param appInsightsName string
param dcrName string
param location string
param tags object
param workspaceId string

@description('Where the rule goes: the workspace\'s region, where Azure Monitor wants a logs ingestion endpoint.')
param workspaceLocation string

@description('The schema/*.json documents: { table, stream, columns: [{ name, type }] }.')
param tables array

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspaceId
    IngestionMode: 'LogAnalytics'
  }
}

// One input stream per table, declared with the table's own columns (the same schema/*.json), so rows pass
// through unchanged ('source') and the stream name doubles as the output stream, Custom-<table>.
var streamDeclarations = toObject(tables, t => t.stream, t => {
  columns: t.columns
})

var dataFlows = map(tables, t => {
  streams: [
    t.stream
  ]
  destinations: [
    'workspace'
  ]
  transformKql: 'source'
  outputStream: t.stream
})

resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: dcrName
  location: workspaceLocation
  tags: tags
  kind: 'Direct'
  properties: {
    description: 'itsmc: ServiceNow incidents and change requests (ServiceDesk_CL) and the connector log (ServiceDeskLog_CL)'
    streamDeclarations: streamDeclarations
    destinations: {
      logAnalytics: [
        {
          name: 'workspace'
          workspaceResourceId: workspaceId
        }
      ]
    }
    dataFlows: dataFlows
  }
}

output appInsightsConnectionString string = appInsights.properties.ConnectionString
output dcrName string = dcr.name
output dcrImmutableId string = dcr.properties.immutableId
output logsIngestionEndpoint string = dcr.properties.endpoints.logsIngestion
